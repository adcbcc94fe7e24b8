#define LOOPD_VERSION "0.1.0"
