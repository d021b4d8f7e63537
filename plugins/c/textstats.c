/* textstats: counts a text's bytes, characters, words and lines, finds its
 * longest line and its CRC-32, for an agent checking what it fetched or
 * wrote. Reads `text` from the input, or `path` from a directory the
 * operator granted. */
#include <errno.h>

#include "tool.h"
#include "json.h"

/* Larger files are refused rather than read into the sandbox's memory. */
#define MAX_FILE (16u << 20)

static void set_str(tool_string_t *s, const char *text) { tool_string_dup(s, text); }

static bool fail(tool_tool_error_t *err, uint8_t tag, const char *msg) {
  err->tag = tag;
  set_str(&err->val.permanent, msg);
  return false;
}

void exports_tool_describe(tool_tool_info_t *ret) {
  set_str(&ret->name, "textstats");
  set_str(&ret->description,
          "Counts bytes, characters, words and lines of a text, with its longest line and CRC-32. "
          "Give `text`, or `path` of a file in a granted directory.");
  set_str(&ret->input_schema,
          "{\"type\":\"object\",\"properties\":{\"text\":{\"type\":\"string\"},"
          "\"path\":{\"type\":\"string\"}},\"oneOf\":[{\"required\":[\"text\"]},{\"required\":[\"path\"]}]}");
  ret->output_schema.is_some = true;
  set_str(&ret->output_schema.val,
          "{\"type\":\"object\",\"required\":[\"bytes\",\"chars\",\"words\",\"lines\",\"longest_line\",\"crc32\"],"
          "\"properties\":{\"bytes\":{\"type\":\"integer\"},\"chars\":{\"type\":\"integer\"},"
          "\"words\":{\"type\":\"integer\"},\"lines\":{\"type\":\"integer\"},"
          "\"longest_line\":{\"type\":\"integer\"},\"crc32\":{\"type\":\"string\"}}}");
  ret->effect = BACKSTOP_TOOL_TYPES_EFFECT_READ_ONLY;
}

static uint32_t crc32(const unsigned char *p, size_t n) {
  static uint32_t table[256];
  if (!table[1]) {
    for (uint32_t i = 0; i < 256; i++) {
      uint32_t c = i;
      for (int k = 0; k < 8; k++) c = c & 1 ? 0xEDB88320u ^ (c >> 1) : c >> 1;
      table[i] = c;
    }
  }
  uint32_t c = 0xFFFFFFFFu;
  for (size_t i = 0; i < n; i++) c = table[(c ^ p[i]) & 0xFF] ^ (c >> 8);
  return c ^ 0xFFFFFFFFu;
}

static void stats(const unsigned char *p, size_t n, json_out *o) {
  uint64_t chars = 0, words = 0, lines = 0, longest = 0, line = 0;
  bool in_word = false;
  for (size_t i = 0; i < n; i++) {
    unsigned char ch = p[i];
    bool lead = (ch & 0xC0) != 0x80; /* UTF-8: count characters, not bytes */
    if (lead) chars++;
    if (ch == '\n') {
      lines++;
      if (line > longest) longest = line;
      line = 0;
    } else if (lead) {
      line++;
    }
    bool space = ch == ' ' || ch == '\n' || ch == '\t' || ch == '\r' || ch == '\f' || ch == '\v';
    if (!space && !in_word) words++;
    in_word = !space;
  }
  if (line > 0) lines++; /* a last line without a newline still counts */
  if (line > longest) longest = line;
  out_fmt(o, "{\"bytes\":%llu,\"chars\":%llu,\"words\":%llu,\"lines\":%llu,\"longest_line\":%llu,",
          (unsigned long long)n, (unsigned long long)chars, (unsigned long long)words,
          (unsigned long long)lines, (unsigned long long)longest);
  out_fmt(o, "\"crc32\":\"%08x\"}", crc32(p, n));
}

/* Reads a whole file; on failure returns NULL with the error filled in. */
static unsigned char *read_file(const char *path, size_t *len, tool_tool_error_t *err) {
  FILE *f = fopen(path, "rb");
  if (!f) {
    char msg[512];
    snprintf(msg, sizeof msg, "cannot open %s: %s", path, strerror(errno));
    /* Missing or outside the grant: asking again cannot help. */
    fail(err, BACKSTOP_TOOL_TYPES_TOOL_ERROR_PERMANENT, msg);
    return NULL;
  }
  size_t cap = 4096, n = 0;
  unsigned char *buf = malloc(cap);
  for (;;) {
    if (!buf) break;
    size_t got = fread(buf + n, 1, cap - n, f);
    n += got;
    if (n > MAX_FILE) {
      fclose(f);
      free(buf);
      fail(err, BACKSTOP_TOOL_TYPES_TOOL_ERROR_INVALID_INPUT, "file is larger than 16 MiB");
      return NULL;
    }
    if (got == 0) break;
    if (n == cap) {
      unsigned char *b = realloc(buf, cap * 2);
      if (!b) { free(buf); buf = NULL; break; }
      buf = b;
      cap *= 2;
    }
  }
  bool bad = ferror(f);
  fclose(f);
  if (!buf || bad) {
    free(buf);
    fail(err, BACKSTOP_TOOL_TYPES_TOOL_ERROR_TRANSIENT, "reading the file failed");
    return NULL;
  }
  *len = n;
  return buf;
}

bool exports_tool_invoke(tool_string_t *input, tool_output_t *ret, tool_tool_error_t *err) {
  const char *json = (const char *)input->ptr;
  size_t len = input->len, n = 0;
  char *text = NULL, *path = NULL;
  unsigned char *data = NULL;
  bool ok = false;

  int t = json_get_string(json, len, "text", &text, &n);
  int p = t == JSON_FOUND ? JSON_MISSING : json_get_string(json, len, "path", &path, &n);
  if (t == JSON_MALFORMED || p == JSON_MALFORMED) {
    fail(err, BACKSTOP_TOOL_TYPES_TOOL_ERROR_INVALID_INPUT, "input is not a JSON object");
  } else if (t == JSON_WRONG_TYPE || p == JSON_WRONG_TYPE) {
    fail(err, BACKSTOP_TOOL_TYPES_TOOL_ERROR_INVALID_INPUT, "`text` and `path` must be strings");
  } else if (t != JSON_FOUND && p != JSON_FOUND) {
    fail(err, BACKSTOP_TOOL_TYPES_TOOL_ERROR_INVALID_INPUT, "give `text` or `path`");
  } else {
    const unsigned char *bytes = (const unsigned char *)text;
    if (path) bytes = data = read_file(path, &n, err);
    if (bytes) {
      json_out o = {0};
      stats(bytes, n, &o);
      if (o.oom) {
        free(o.buf);
        fail(err, BACKSTOP_TOOL_TYPES_TOOL_ERROR_TRANSIENT, "out of memory");
      } else {
        ret->value.ptr = (uint8_t *)o.buf;
        ret->value.len = o.len;
        ret->confidence.is_some = false;
        ok = true;
      }
    }
  }
  free(text);
  free(path);
  free(data);
  tool_string_free(input);
  return ok;
}
