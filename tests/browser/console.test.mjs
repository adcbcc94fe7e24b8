// Drives the real loopd console in Debian's headless Chromium: sign in,
// create a session, send a message and watch the streamed answer, answer a
// client-side tool call, cancel a running turn, rename a session and see
// the list update, and the error shown for a wrong API key.  Screenshots
// of the list and a session page go to build/.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { mkdtempSync, mkdirSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, dirname } from "node:path";
import { fileURLToPath } from "node:url";
import net from "node:net";
import { chromium } from "playwright-core";

const ROOT = join(dirname(fileURLToPath(import.meta.url)), "..", "..");
const BIN = process.env.LOOPD_BIN || join(ROOT, "build", "loopd");
const KEY = "evr_pat_" + "ab".repeat(24);
let proc, base, browser, dataDir, port;

function startLoopd() {
  proc = spawn(BIN, ["--listen", "127.0.0.1:" + port, "--data-dir", dataDir, "--log-level", "warn"],
               { env: { ...process.env, LOOPD_BOOTSTRAP_KEY: KEY }, stdio: ["ignore", "inherit", "inherit"] });
  return waitReady(base, 10000);
}

async function stopLoopd() {
  const done = new Promise((res) => proc.on("exit", (code) => res(code)));
  proc.kill("SIGTERM");
  const code = await done;
  proc = null;
  return code;
}

function freePort() {
  return new Promise((res) => {
    const s = net.createServer();
    s.listen(0, "127.0.0.1", () => { const p = s.address().port; s.close(() => res(p)); });
  });
}

async function waitReady(url, ms) {
  const end = Date.now() + ms;
  while (Date.now() < end) {
    try { if ((await fetch(url + "/healthz")).ok) return; } catch (e) { /* not yet */ }
    await new Promise((r) => setTimeout(r, 50)); // polling, bounded by the deadline
  }
  throw new Error("loopd did not become ready");
}

async function api(method, path, body) {
  const r = await fetch(base + path, { method, headers: { Authorization: KEY, "Content-Type": "application/json" },
                                       body: body === undefined ? undefined : JSON.stringify(body) });
  const t = await r.text();
  if (!r.ok) throw new Error(method + " " + path + " -> " + r.status + " " + t);
  return t ? JSON.parse(t) : null;
}

before(async () => {
  dataDir = mkdtempSync(join(tmpdir(), "loopd-browser-"));
  port = await freePort();
  base = "http://127.0.0.1:" + port;
  await startLoopd();
  browser = await chromium.launch({
    executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
    args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync"],
  });
});

after(async () => {
  if (browser) await browser.close();
  if (proc) assert.equal(await stopLoopd(), 0, "loopd exited non-zero");
  rmSync(dataDir, { recursive: true, force: true });
});

async function signedIn() {
  const page = await browser.newPage({ viewport: { width: 1100, height: 800 } });
  await page.goto(base + "/");
  await page.getByLabel("API key").fill(KEY);
  await page.getByRole("button", { name: "Sign in" }).click();
  await page.getByRole("heading", { name: "Sessions" }).waitFor();
  return page;
}

test("a wrong API key shows the API's error", async () => {
  const page = await browser.newPage();
  await page.goto(base + "/");
  await page.getByLabel("API key").fill("evr_pat_wrong");
  await page.getByRole("button", { name: "Sign in" }).click();
  const err = page.getByTestId("error");
  await err.waitFor();
  assert.match(await err.innerText(), /Invalid API key/);
  await page.close();
});

test("sign in, create a session, send a message and see the answer stream in", async () => {
  const page = await signedIn();
  await page.getByTestId("new-title").fill("Browser test");
  await page.getByTestId("create-session").click();
  await page.getByTestId("composer").waitFor();
  assert.match(page.url(), /\/sessions\/session_[0-9a-f]{32}\/chat$/);
  await page.getByTestId("composer").fill("Hello from the browser");
  await page.getByTestId("send").click();
  const answer = page.getByTestId("msg-agent").last();
  await answer.waitFor();
  await page.waitForFunction(() => /deterministic model/.test(
    [...document.querySelectorAll("[data-testid=msg-agent]")].pop()?.textContent || ""));
  assert.match(await answer.innerText(), /You said: "Hello from the browser"/);
  await page.waitForFunction(() => document.querySelector("[data-testid=session-status]").textContent === "idle");
  assert.match(await page.getByTestId("usage").innerText(), /tokens: \d+ in, \d+ out/);
  mkdirSync(join(ROOT, "build"), { recursive: true });
  await page.screenshot({ path: join(ROOT, "build", "console-session.png"), fullPage: true });
  await page.close();
});

test("the answer appears token by token, and pinned sessions come first", async () => {
  const s = await api("POST", "/v1/sessions", { title: "Streaming test" });
  const page = await signedIn();
  await page.goto(base + "/sessions/" + s.id + "/chat");
  await page.getByTestId("composer").waitFor();
  // record every text the agent's bubble shows while the answer streams
  await page.evaluate(() => {
    window.seen = [];
    new MutationObserver(() => {
      const b = [...document.querySelectorAll("[data-testid=msg-agent]")].pop();
      if (b && window.seen[window.seen.length - 1] !== b.textContent) window.seen.push(b.textContent);
    }).observe(document.querySelector("[data-testid=conversation]"), { subtree: true, childList: true, characterData: true });
  });
  await page.getByTestId("composer").fill("please stream this answer llmsim:latency=1600");
  await page.getByTestId("send").click();
  await page.waitForFunction(() => document.querySelector("[data-testid=session-status]").textContent === "idle"
    && /deterministic model/.test([...document.querySelectorAll("[data-testid=msg-agent]")].pop()?.textContent || ""));
  const seen = await page.evaluate(() => window.seen);
  assert.ok(seen.length >= 3, "the answer arrived in one piece: " + JSON.stringify(seen));
  for (let i = 1; i < seen.length; i++) assert.ok(seen[i].startsWith(seen[i - 1]), "text went back: " + JSON.stringify(seen));
  // pin it: the list shows it first, above newer sessions
  await api("POST", "/v1/sessions", { title: "Newer, not pinned" });
  await api("PUT", "/v1/sessions/" + s.id + "/pin");
  await page.getByRole("link", { name: "← Sessions" }).click();
  await page.getByRole("link", { name: "Newer, not pinned" }).waitFor();
  const first = page.getByTestId("session-row").first();
  assert.equal(await first.getAttribute("data-id"), s.id);
  // narrow screen
  await page.setViewportSize({ width: 390, height: 760 });
  await page.screenshot({ path: join(ROOT, "build", "console-narrow.png"), fullPage: true });
  await page.close();
});

test("answer a client-side tool call by hand", async () => {
  const s = await api("POST", "/v1/sessions", { title: "Tool test", tools: [{ type: "client_side", name: "ask_human",
    description: "Ask", parameters: { type: "object" } }] });
  const page = await signedIn();
  await page.goto(base + "/sessions/" + s.id + "/chat");
  await page.getByTestId("composer").waitFor();
  await api("POST", "/v1/sessions/" + s.id + "/messages", { message: { role: "user", content: [{ type: "text", text: "ask me" }] },
    controls: { hints: { llmsim: { tool: "ask_human", arguments: { q: "color?" } } } } });
  const form = page.getByTestId("tool-request");
  await form.waitFor();
  assert.match(await form.innerText(), /ask_human/);
  await page.getByTestId("tool-result-input").fill("blue");
  await page.getByTestId("tool-submit").click();
  await page.waitForFunction(() => /tools returned: ask_human: blue/.test(
    [...document.querySelectorAll("[data-testid=msg-agent]")].pop()?.textContent || ""));
  await page.waitForFunction(() => document.querySelector("[data-testid=session-status]").textContent === "idle");
  await page.close();
});

test("cancel a running turn", async () => {
  const s = await api("POST", "/v1/sessions", { title: "Cancel test" });
  const page = await signedIn();
  await page.goto(base + "/sessions/" + s.id + "/chat");
  await page.getByTestId("composer").fill("take your time llmsim:latency=20000");
  await page.getByTestId("send").click();
  await page.waitForFunction(() => document.querySelector("[data-testid=session-status]").textContent === "active");
  await page.getByTestId("cancel").click();
  await page.waitForFunction(() => /Work was cancelled by user/.test(document.querySelector("[data-testid=conversation]").textContent));
  await page.waitForFunction(() => document.querySelector("[data-testid=session-status]").textContent === "idle");
  const st = await api("GET", "/v1/sessions/" + s.id);
  assert.equal(st.status, "idle");
  await page.close();
});

test("rename a session and see the list update", async () => {
  const s = await api("POST", "/v1/sessions", { title: "Old name" });
  const page = await signedIn();
  await page.goto(base + "/sessions/" + s.id + "/chat");
  await page.getByTestId("title").fill("New name from the console");
  await page.getByTestId("tags").fill("ui, renamed");
  await page.getByTestId("save-meta").click();
  await page.getByRole("button", { name: "Saved" }).waitFor();
  const st = await api("GET", "/v1/sessions/" + s.id);
  assert.equal(st.title, "New name from the console");
  assert.deepEqual(st.tags, ["ui", "renamed"]);
  await page.getByRole("link", { name: "← Sessions" }).click();
  await page.getByRole("link", { name: "New name from the console" }).waitFor();
  await page.screenshot({ path: join(ROOT, "build", "console-list.png"), fullPage: true });
  await page.close();
});

test("after the connection drops, the page resumes without losing or repeating", async () => {
  const s = await api("POST", "/v1/sessions", { title: "Reconnect test" });
  await api("POST", "/v1/sessions/" + s.id + "/messages", { message: { role: "user", content: [{ type: "text", text: "before the drop" }] } });
  const page = await signedIn();
  await page.goto(base + "/sessions/" + s.id + "/chat");
  await page.waitForFunction(() => document.querySelectorAll("[data-testid=msg-agent]").length === 1
    && /before the drop/.test(document.querySelector("[data-testid=msg-agent]").textContent));
  // the server goes away (its streams end) and comes back on the same address
  assert.equal(await stopLoopd(), 0);
  await startLoopd();
  await api("POST", "/v1/sessions/" + s.id + "/messages", { message: { role: "user", content: [{ type: "text", text: "after the drop" }] } });
  await page.waitForFunction(() => /after the drop/.test(
    [...document.querySelectorAll("[data-testid=msg-agent]")].pop()?.textContent || ""), null, { timeout: 15000 });
  const texts = await page.$$eval("[data-testid=conversation] .msg", (els) => els.map((e) => e.dataset.testid + ":" + e.textContent));
  assert.equal(texts.length, 4, JSON.stringify(texts)); // two questions, two answers
  const st = await page.evaluate(() => window.loopdStream);
  assert.ok(st.reconnects >= 1, JSON.stringify(st));
  assert.equal(st.duplicates, 0, "an event arrived twice: " + JSON.stringify(st));
  assert.match(texts[0], /^msg-user:before the drop/);
  assert.match(texts[2], /^msg-user:after the drop/);
  await page.close();
});
