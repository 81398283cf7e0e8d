// OpenSSL allocation accounting: CRYPTO_set_mem_functions hooks recording live allocations by file:line.
#define _GNU_SOURCE
#include <malloc.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <pthread.h>
#include <openssl/crypto.h>

#define NB (1u << 22)
typedef struct { void *p; const char *file; int line; size_t size; unsigned gen; } ent;
static ent *tab;
static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static unsigned cur_gen = 0;
static size_t live_bytes = 0, live_usable = 0;

static size_t h(void *p) { uintptr_t x = (uintptr_t)p; x ^= x >> 17; x *= 0x9E3779B97F4A7C15ull; return (x >> 20) & (NB - 1); }
static void put(void *p, const char *f, int l, size_t s) {
  size_t i = h(p);
  while (tab[i].p && tab[i].p != (void *)1) i = (i + 1) & (NB - 1);
  tab[i].p = p; tab[i].file = f; tab[i].line = l; tab[i].size = s; tab[i].gen = cur_gen;
  live_bytes += s; live_usable += malloc_usable_size(p);
}
static void del(void *p) {
  size_t i = h(p);
  while (tab[i].p) {
    if (tab[i].p == p) { live_bytes -= tab[i].size; live_usable -= malloc_usable_size(p); tab[i].p = (void *)1; return; }
    i = (i + 1) & (NB - 1);
  }
}
static void *pm(size_t n, const char *f, int l) {
  void *p = malloc(n);
  if (p) { pthread_mutex_lock(&mu); put(p, f, l, n); pthread_mutex_unlock(&mu); }
  return p;
}
static void pf(void *p, const char *f, int l) {
  if (!p) return;
  pthread_mutex_lock(&mu); del(p); pthread_mutex_unlock(&mu);
  free(p);
}
static void *pr(void *o, size_t n, const char *f, int l) {
  if (o) { pthread_mutex_lock(&mu); del(o); pthread_mutex_unlock(&mu); }
  void *p = realloc(o, n);
  if (p) { pthread_mutex_lock(&mu); put(p, f, l, n); pthread_mutex_unlock(&mu); }
  return p;
}
int probe_install(void) {
  tab = calloc(NB, sizeof(ent));
  return CRYPTO_set_mem_functions(pm, pr, pf);
}
void probe_mark(void) { pthread_mutex_lock(&mu); cur_gen++; pthread_mutex_unlock(&mu); }
size_t probe_live(void) { return live_bytes; }
size_t probe_live_usable(void) { return live_usable; }
// dump live allocations of generation >= gen: "file:line size usable" one a line
int probe_dump(const char *path, unsigned gen) {
  FILE *out = fopen(path, "w");
  if (!out) return -1;
  pthread_mutex_lock(&mu);
  for (size_t i = 0; i < NB; i++)
    if (tab[i].p && tab[i].p != (void *)1 && tab[i].gen >= gen)
      fprintf(out, "%s:%d %zu %zu\n", tab[i].file ? tab[i].file : "?", tab[i].line, tab[i].size, malloc_usable_size(tab[i].p));
  pthread_mutex_unlock(&mu);
  fclose(out);
  return 0;
}
