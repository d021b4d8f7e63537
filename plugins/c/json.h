/* Just enough JSON for a tool: read top-level string and number fields of
 * the input object, and write output with correct escaping. Tools get
 * their input as JSON text; this keeps C tools free of a vendored parser.
 * Header-only: every function is static. */
#ifndef BACKSTOP_JSON_H
#define BACKSTOP_JSON_H

#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- reading ---------------------------------------------------------- */

typedef struct {
  const char *p, *end;
} json_cur;

static void json_ws(json_cur *c) {
  while (c->p < c->end && (*c->p == ' ' || *c->p == '\t' || *c->p == '\n' || *c->p == '\r'))
    c->p++;
}

static int json_hex4(const char *p, uint32_t *out) {
  uint32_t v = 0;
  for (int i = 0; i < 4; i++) {
    char ch = p[i];
    v <<= 4;
    if (ch >= '0' && ch <= '9') v |= (uint32_t)(ch - '0');
    else if (ch >= 'a' && ch <= 'f') v |= (uint32_t)(ch - 'a' + 10);
    else if (ch >= 'A' && ch <= 'F') v |= (uint32_t)(ch - 'A' + 10);
    else return -1;
  }
  *out = v;
  return 0;
}

static size_t json_utf8(uint32_t cp, char *out) {
  if (cp < 0x80) { out[0] = (char)cp; return 1; }
  if (cp < 0x800) { out[0] = (char)(0xC0 | (cp >> 6)); out[1] = (char)(0x80 | (cp & 0x3F)); return 2; }
  if (cp < 0x10000) {
    out[0] = (char)(0xE0 | (cp >> 12)); out[1] = (char)(0x80 | ((cp >> 6) & 0x3F));
    out[2] = (char)(0x80 | (cp & 0x3F)); return 3;
  }
  out[0] = (char)(0xF0 | (cp >> 18)); out[1] = (char)(0x80 | ((cp >> 12) & 0x3F));
  out[2] = (char)(0x80 | ((cp >> 6) & 0x3F)); out[3] = (char)(0x80 | (cp & 0x3F)); return 4;
}

/* Parses a string at the cursor. With `out`, stores a malloc'd, decoded,
 * NUL-terminated copy (its length in `len`). Returns 0, or -1 if malformed. */
static int json_string(json_cur *c, char **out, size_t *len) {
  if (c->p >= c->end || *c->p != '"') return -1;
  c->p++;
  char *buf = NULL;
  size_t n = 0;
  if (out) {
    /* Decoding never makes a string longer than its escaped form. */
    buf = malloc((size_t)(c->end - c->p) + 1);
    if (!buf) return -1;
  }
  while (c->p < c->end && *c->p != '"') {
    char ch = *c->p++;
    if ((unsigned char)ch < 0x20) goto bad;
    if (ch != '\\') { if (buf) buf[n++] = ch; continue; }
    if (c->p >= c->end) goto bad;
    char e = *c->p++;
    char tmp[4];
    size_t k = 1;
    switch (e) {
      case '"': tmp[0] = '"'; break;
      case '\\': tmp[0] = '\\'; break;
      case '/': tmp[0] = '/'; break;
      case 'b': tmp[0] = '\b'; break;
      case 'f': tmp[0] = '\f'; break;
      case 'n': tmp[0] = '\n'; break;
      case 'r': tmp[0] = '\r'; break;
      case 't': tmp[0] = '\t'; break;
      case 'u': {
        uint32_t cp;
        if (c->end - c->p < 4 || json_hex4(c->p, &cp)) goto bad;
        c->p += 4;
        if (cp >= 0xD800 && cp <= 0xDBFF) {
          uint32_t lo;
          if (c->end - c->p < 6 || c->p[0] != '\\' || c->p[1] != 'u' || json_hex4(c->p + 2, &lo) ||
              lo < 0xDC00 || lo > 0xDFFF)
            goto bad;
          c->p += 6;
          cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
        } else if (cp >= 0xDC00 && cp <= 0xDFFF) {
          goto bad;
        }
        k = json_utf8(cp, tmp);
        break;
      }
      default: goto bad;
    }
    if (buf) { memcpy(buf + n, tmp, k); n += k; }
  }
  if (c->p >= c->end) goto bad;
  c->p++;
  if (out) { buf[n] = 0; *out = buf; *len = n; }
  return 0;
bad:
  free(buf);
  return -1;
}

/* Skips any value, checking only what skipping needs. */
static int json_skip(json_cur *c) {
  json_ws(c);
  if (c->p >= c->end) return -1;
  if (*c->p == '"') return json_string(c, NULL, NULL);
  if (*c->p == '{' || *c->p == '[') {
    int depth = 0;
    while (c->p < c->end) {
      char ch = *c->p;
      if (ch == '"') { if (json_string(c, NULL, NULL)) return -1; continue; }
      if (ch == '{' || ch == '[') depth++;
      if (ch == '}' || ch == ']') { depth--; if (depth == 0) { c->p++; return 0; } }
      c->p++;
    }
    return -1;
  }
  const char *start = c->p;
  while (c->p < c->end && strchr(",}] \t\r\n", *c->p) == NULL) c->p++;
  return c->p > start ? 0 : -1;
}

enum { JSON_MISSING = 0, JSON_FOUND = 1, JSON_MALFORMED = -1, JSON_WRONG_TYPE = -2 };

/* Finds `key` at the top level of the object in `json`. On JSON_FOUND the
 * cursor `val` points at its value. */
static int json_find(const char *json, size_t len, const char *key, json_cur *val) {
  json_cur c = {json, json + len};
  json_ws(&c);
  if (c.p >= c.end || *c.p != '{') return JSON_MALFORMED;
  c.p++;
  json_ws(&c);
  if (c.p < c.end && *c.p == '}') return JSON_MISSING;
  for (;;) {
    char *k;
    size_t klen;
    json_ws(&c);
    if (json_string(&c, &k, &klen)) return JSON_MALFORMED;
    int match = strlen(key) == klen && memcmp(k, key, klen) == 0;
    free(k);
    json_ws(&c);
    if (c.p >= c.end || *c.p != ':') return JSON_MALFORMED;
    c.p++;
    json_ws(&c);
    if (match) { *val = c; return JSON_FOUND; }
    if (json_skip(&c)) return JSON_MALFORMED;
    json_ws(&c);
    if (c.p < c.end && *c.p == ',') { c.p++; continue; }
    if (c.p < c.end && *c.p == '}') return JSON_MISSING;
    return JSON_MALFORMED;
  }
}

/* A top-level string field, decoded into a malloc'd NUL-terminated copy. */
static int json_get_string(const char *json, size_t len, const char *key, char **out, size_t *out_len) {
  json_cur v;
  int r = json_find(json, len, key, &v);
  if (r != JSON_FOUND) return r;
  if (v.p >= v.end || *v.p != '"') return JSON_WRONG_TYPE;
  return json_string(&v, out, out_len) ? JSON_MALFORMED : JSON_FOUND;
}

/* A top-level non-negative integer field. */
static int json_get_u64(const char *json, size_t len, const char *key, uint64_t *out) {
  json_cur v;
  int r = json_find(json, len, key, &v);
  if (r != JSON_FOUND) return r;
  if (v.p >= v.end || *v.p < '0' || *v.p > '9') return JSON_WRONG_TYPE;
  uint64_t n = 0;
  while (v.p < v.end && *v.p >= '0' && *v.p <= '9') {
    uint64_t d = (uint64_t)(*v.p++ - '0');
    if (n > (UINT64_MAX - d) / 10) return JSON_WRONG_TYPE;
    n = n * 10 + d;
  }
  *out = n;
  return JSON_FOUND;
}

/* ---- writing ---------------------------------------------------------- */

typedef struct {
  char *buf;
  size_t len, cap;
  bool oom;
} json_out;

static void out_bytes(json_out *o, const char *s, size_t n) {
  if (o->oom) return;
  if (o->len + n + 1 > o->cap) {
    size_t cap = o->cap ? o->cap : 64;
    while (cap < o->len + n + 1) cap *= 2;
    char *b = realloc(o->buf, cap);
    if (!b) { o->oom = true; return; }
    o->buf = b;
    o->cap = cap;
  }
  memcpy(o->buf + o->len, s, n);
  o->len += n;
  o->buf[o->len] = 0;
}

static void out_raw(json_out *o, const char *s) { out_bytes(o, s, strlen(s)); }

static void out_fmt(json_out *o, const char *fmt, ...) {
  char tmp[128];
  va_list ap;
  va_start(ap, fmt);
  int n = vsnprintf(tmp, sizeof tmp, fmt, ap);
  va_end(ap);
  if (n > 0) out_bytes(o, tmp, (size_t)n < sizeof tmp ? (size_t)n : sizeof tmp - 1);
}

/* Writes `s` as a JSON string literal. */
static void out_str(json_out *o, const char *s, size_t n) {
  out_bytes(o, "\"", 1);
  for (size_t i = 0; i < n; i++) {
    unsigned char ch = (unsigned char)s[i];
    if (ch == '"') out_bytes(o, "\\\"", 2);
    else if (ch == '\\') out_bytes(o, "\\\\", 2);
    else if (ch == '\n') out_bytes(o, "\\n", 2);
    else if (ch == '\r') out_bytes(o, "\\r", 2);
    else if (ch == '\t') out_bytes(o, "\\t", 2);
    else if (ch < 0x20) out_fmt(o, "\\u%04x", ch);
    else out_bytes(o, (const char *)&s[i], 1);
  }
  out_bytes(o, "\"", 1);
}

#endif
