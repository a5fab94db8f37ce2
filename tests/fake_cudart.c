/* A stand-in libcudart for tests/test_cuda.py: the CUDA runtime calls edgetl makes, each answering the way one
 * kind of machine does (compiled once per MODE). Memory is host memory, so copies can be checked; graph and
 * capture calls are written to a log the test reads back. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static char LOG[4096];

static void note(const char *what, long value) {
    char line[64];
    snprintf(line, sizeof line, "%s:%ld;", what, value);
    strncat(LOG, line, sizeof LOG - strlen(LOG) - 1);
}

const char *fake_log(void) { return LOG; }
void fake_clear(void) { LOG[0] = 0; }

const char *cudaGetErrorName(int err) {
    switch (err) {
    case 35: return "cudaErrorInsufficientDriver";
    case 100: return "cudaErrorNoDevice";
    case 901: return "cudaErrorStreamCaptureInvalidated";
    default: return "cudaErrorUnknown";
    }
}

int cudaRuntimeGetVersion(int *v) { *v = 12040; return 0; }

#ifndef MODE_NO_SYMBOL
int cudaGetDeviceCount(int *n) {
#if defined(MODE_NO_DRIVER)
    *n = 0; return 35;
#elif defined(MODE_NO_DEVICE)
    *n = 0; return 100;
#elif defined(MODE_ZERO)
    *n = 0; return 0;
#else
    *n = 1; return 0;
#endif
}
#endif

int cudaDeviceGetAttribute(int *v, int attr, int dev) { *v = attr == 75 ? 8 : 7; return 0; }
int cudaGetDeviceProperties_v2(char *prop, int dev) { strcpy(prop, "Orin (fake)"); return 0; }
int cudaDriverGetVersion(int *v) { *v = 12020; return 0; }

int cudaMalloc(void **p, size_t n) { *p = malloc(n); return *p ? 0 : 2; }
int cudaFree(void *p) { free(p); note("free", 1); return 0; }
int cudaStreamCreate(void **s) { *s = (void *)0x5; return 0; }
int cudaStreamDestroy(void *s) { note("stream_destroy", (long)s); return 0; }
int cudaStreamSynchronize(void *s) { return 0; }
int cudaMemcpyAsync(void *dst, const void *src, size_t n, int kind, void *s) {
    memcpy(dst, src, n); note("copy", kind); return 0;
}
int cudaStreamBeginCapture(void *s, int mode) { note("begin", mode); return 0; }
int cudaStreamEndCapture(void *s, void **graph) { note("end", 0); *graph = (void *)99; return 0; }
int cudaGraphDestroy(void *g) { note("destroy_graph", (long)g); return 0; }
int cudaGraphInstantiateWithFlags(void **exec, void *g, unsigned long long flags) {
    note("instantiate", (long)g); *exec = (void *)100; return 0;
}
int cudaGraphLaunch(void *exec, void *s) { note("launch", (long)exec); return 0; }
int cudaGraphExecDestroy(void *exec) { note("destroy_exec", (long)exec); return 0; }
