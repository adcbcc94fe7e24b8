# loopd — one plain Makefile.  `make` builds build/loopd and starts nothing.
#   make run      install deps, build, start on 127.0.0.1:9300 (SQLite in ./data)
#   make test     install deps, build, run every test (unit, API, ASan+UBSan API)
#   make bench    benchmarks (wrk against loopd and nginx)
#   make asan     build build/asan/loopd with AddressSanitizer + UBSan
#   make format   clang-format the sources; `make check-format` verifies

CC      ?= cc
PKGS    := jansson sqlite3 libcurl
CFLAGS_BASE := -std=c17 -D_GNU_SOURCE -Wall -Wextra -Werror -Wshadow \
	-Wno-unused-parameter -Isrc $(shell pkg-config --cflags $(PKGS) 2>/dev/null)
CFLAGS  ?= -O2 -g
LDLIBS  := $(shell pkg-config --libs $(PKGS) 2>/dev/null) -lpthread -lm
LISTEN  ?= 127.0.0.1:9300
DATA    ?= ./data
PY      := /usr/bin/python3

SRCS := $(sort $(wildcard src/*.c src/*/*.c))
LIB_SRCS := $(filter-out src/main.c,$(SRCS))
GEN  := build/gen/openapi_doc.c build/gen/console_html.c

GEN_O     := gen/openapi_doc.o gen/console_html.o
OBJS      := $(patsubst src/%.c,build/obj/%.o,$(SRCS)) $(addprefix build/obj/,$(GEN_O))
ASAN_OBJS := $(patsubst src/%.c,build/asan/obj/%.o,$(SRCS)) $(addprefix build/asan/obj/,$(GEN_O))
LIB_OBJS  := $(patsubst src/%.c,build/obj/%.o,$(LIB_SRCS)) $(addprefix build/obj/,$(GEN_O))
ASAN_FLAGS := -O1 -g -fno-omit-frame-pointer -fsanitize=address,undefined -fno-sanitize-recover=undefined

UNIT_SRCS := $(wildcard tests/unit/test_*.c)
UNIT_BINS := $(patsubst tests/unit/%.c,build/unit/%,$(UNIT_SRCS))
ASAN_UNIT_BINS := $(patsubst tests/unit/%.c,build/asan/unit/%,$(UNIT_SRCS))
ASAN_LIB_OBJS  := $(patsubst src/%.c,build/asan/obj/%.o,$(LIB_SRCS)) $(addprefix build/asan/obj/,$(GEN_O))

.PHONY: all run test unit unit-asan api api-asan api-valgrind browser asan bench fuzz fuzz-jfast fuzz-http format check-format deps clean

all: build/loopd

build/loopd: $(OBJS)
	$(CC) $(CFLAGS) -o $@ $^ $(LDLIBS)

build/obj/%.o: src/%.c $(wildcard src/*.h src/*/*.h)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS_BASE) $(CFLAGS) -c -o $@ $<

build/obj/gen/%.o: build/gen/%.c
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS_BASE) $(CFLAGS) -c -o $@ $<

build/gen/openapi_doc.c: docs/openapi.json scripts/embed
	@mkdir -p $(dir $@)
	scripts/embed loopd_openapi_json $< > $@

build/gen/console_html.c: web/console.html scripts/embed
	@mkdir -p $(dir $@)
	scripts/embed loopd_console_html $< > $@

asan: build/asan/loopd
build/asan/loopd: $(ASAN_OBJS)
	$(CC) $(ASAN_FLAGS) -o $@ $^ $(LDLIBS)
build/asan/obj/%.o: src/%.c $(wildcard src/*.h src/*/*.h)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS_BASE) $(ASAN_FLAGS) -c -o $@ $<
build/asan/obj/gen/%.o: build/gen/%.c
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS_BASE) $(ASAN_FLAGS) -c -o $@ $<

build/unit/%: tests/unit/%.c $(LIB_OBJS)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS_BASE) $(CFLAGS) -o $@ $^ $(LDLIBS) -lcmocka

build/asan/unit/%: tests/unit/%.c $(ASAN_LIB_OBJS)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS_BASE) $(ASAN_FLAGS) -o $@ $^ $(LDLIBS) -lcmocka

deps:
	@scripts/install-deps

run: deps
	@$(MAKE) --no-print-directory all
	@scripts/run-banner $(LISTEN) $(DATA) & exec build/loopd --listen $(LISTEN) --data-dir $(DATA)

unit: $(UNIT_BINS)
	@scripts/run-units $(UNIT_BINS)

# the unit tests again, built with AddressSanitizer + UBSan (leaks fail too;
# run-units line-buffers through stdbuf, an LD_PRELOAD ASan must allow)
unit-asan: $(ASAN_UNIT_BINS)
	@ASAN_OPTIONS=detect_leaks=1:verify_asan_link_order=0 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
		scripts/run-units $(ASAN_UNIT_BINS)

# storage faults for tests/durability/test_storage_faults.py (LD_PRELOAD)
build/failio.so: tests/faults/failio.c
	@mkdir -p build
	$(CC) -shared -fPIC -O2 -Wall -Wextra -Werror -o $@ $< -ldl

api: build/loopd build/failio.so
	$(PY) -m pytest -q tests/api tests/durability

api-asan: build/asan/loopd build/failio.so
	LOOPD_BIN=build/asan/loopd ASAN_OPTIONS=detect_leaks=1:abort_on_error=0 \
	UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
	$(PY) -m pytest -q tests/api tests/durability

# a long run of randomised requests against the sanitizer build
# (tests/api/test_fuzz.py; `make api` runs 1,500 of them)
FUZZ_CASES ?= 100000
FUZZ_SEED ?= 1
fuzz: build/asan/loopd
	LOOPD_BIN=build/asan/loopd ASAN_OPTIONS=detect_leaks=1:abort_on_error=0 \
	UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 FUZZ_CASES=$(FUZZ_CASES) FUZZ_SEED=$(FUZZ_SEED) \
	$(PY) -m pytest -q -s tests/api/test_fuzz.py

# coverage-guided fuzzing (clang's libFuzzer) of the fast JSON parse
# against jansson: a text jfast takes must be json_loadb's, value and key
# order alike.  New inputs are kept in build/fuzz/jfast-corpus; a failing
# one is saved as build/fuzz/crash-* (rerun: build/fuzz/jfast FILE).
FUZZ_SECONDS ?= 60
build/fuzz/jfast: tests/fuzz/jfast_fuzz.c src/util/jfast.c src/util/jfast.h
	@scripts/install-deps --fuzz
	@mkdir -p build/fuzz
	clang -std=c17 -D_GNU_SOURCE -O1 -g -Wall -Wextra -Werror -fsanitize=fuzzer,address,undefined \
		-fno-sanitize-recover=undefined \
		-Isrc tests/fuzz/jfast_fuzz.c src/util/jfast.c -ljansson -o $@
fuzz-jfast: build/fuzz/jfast
	@mkdir -p build/fuzz/jfast-corpus
	build/fuzz/jfast -max_total_time=$(FUZZ_SECONDS) -dict=tests/fuzz/json.dict \
		-artifact_prefix=build/fuzz/ build/fuzz/jfast-corpus tests/fuzz/jfast-seeds

# the same for the request head parser: tests/fuzz/http_fuzz.c includes
# src/http/server.c (its parser is static) and links the rest of loopd,
# all built by clang with ASan + UBSan
FUZZ_CFLAGS := -std=c17 -D_GNU_SOURCE -O1 -g -Wall -Wextra -Werror -Wno-unused-parameter \
	-Isrc -fsanitize=address,undefined -fno-sanitize-recover=undefined
FUZZ_LIB_SRCS := $(filter-out src/http/server.c,$(LIB_SRCS)) $(GEN)
build/fuzz/http: tests/fuzz/http_fuzz.c $(SRCS) $(GEN) $(wildcard src/*.h src/*/*.h)
	@scripts/install-deps --fuzz
	@mkdir -p build/fuzz
	clang $(FUZZ_CFLAGS) -fsanitize=fuzzer tests/fuzz/http_fuzz.c $(FUZZ_LIB_SRCS) -o $@ $(LDLIBS)
fuzz-http: build/fuzz/http
	@mkdir -p build/fuzz/http-corpus
	build/fuzz/http -max_total_time=$(FUZZ_SECONDS) -dict=tests/fuzz/http.dict \
		-artifact_prefix=build/fuzz/ build/fuzz/http-corpus tests/fuzz/http-seeds

# the resource suites again with the server under valgrind memcheck
api-valgrind: build/loopd
	LOOPD_BIN=scripts/valgrind-loopd $(PY) -m pytest -q tests/api/test_sessions.py \
		tests/api/test_agents.py tests/api/test_chat.py tests/api/test_turns.py \
		tests/api/test_sse.py tests/api/test_tools.py tests/api/test_drivers.py \
		tests/api/test_http.py tests/api/test_bad_input.py

# the web console in Debian's headless Chromium (playwright-core from npm)
browser: build/loopd
	cd tests/browser && npm ci --no-audit --no-fund --loglevel=error && node --test console.test.mjs

test: deps
	@$(MAKE) --no-print-directory all check-format
	@$(MAKE) --no-print-directory unit
	@$(MAKE) --no-print-directory unit-asan
	@$(MAKE) --no-print-directory api
	@$(MAKE) --no-print-directory api-asan
	@$(MAKE) --no-print-directory api-valgrind
	@$(MAKE) --no-print-directory browser

bench: 
	@scripts/install-deps --bench
	@$(MAKE) --no-print-directory all
	bench/run

format:
	clang-format -i $(SRCS) $(wildcard src/*.h src/*/*.h) $(UNIT_SRCS) tests/faults/failio.c tests/fuzz/*.c

check-format:
	@clang-format --dry-run -Werror $(SRCS) $(wildcard src/*.h src/*/*.h) $(UNIT_SRCS) tests/faults/failio.c tests/fuzz/*.c

clean:
	rm -rf build
