/* The minimal C tool, and the template in plugins/README.md: it echoes its
 * input with the call context, or returns the error it is asked for, so the
 * tests can check that every `tool-error` case and the context cross the
 * boundary intact from C. */
#include "tool.h"
#include "json.h"

static void set_str(tool_string_t *s, const char *text) { tool_string_dup(s, text); }

void exports_tool_describe(tool_tool_info_t *ret) {
  set_str(&ret->name, "echo-c");
  set_str(&ret->description,
          "Echoes `say` with the call context, or fails with the tool-error case named by `fail` "
          "(before attempt `until_attempt`, when given).");
  set_str(&ret->input_schema,
          "{\"type\":\"object\",\"properties\":{\"say\":{\"type\":\"string\"},"
          "\"fail\":{\"type\":\"string\"},\"message\":{\"type\":\"string\"},"
          "\"retry_after_ms\":{\"type\":\"integer\",\"minimum\":0},"
          "\"until_attempt\":{\"type\":\"integer\",\"minimum\":1},"
          "\"raise\":{\"type\":\"string\"}}}");
  ret->output_schema.is_some = false;
  ret->effect = BACKSTOP_TOOL_TYPES_EFFECT_READ_ONLY;
}

/* Fills `err` with the case named `kind`; false if there is no such case. */
static bool named_error(const char *kind, const char *msg, bool has_wait, uint64_t wait,
                        tool_tool_error_t *err) {
  static const struct { const char *name; uint8_t tag; } cases[] = {
      {"invalid-input", BACKSTOP_TOOL_TYPES_TOOL_ERROR_INVALID_INPUT},
      {"transient", BACKSTOP_TOOL_TYPES_TOOL_ERROR_TRANSIENT},
      {"rate-limited", BACKSTOP_TOOL_TYPES_TOOL_ERROR_RATE_LIMITED},
      {"unavailable", BACKSTOP_TOOL_TYPES_TOOL_ERROR_UNAVAILABLE},
      {"permanent", BACKSTOP_TOOL_TYPES_TOOL_ERROR_PERMANENT},
      {"needs-human", BACKSTOP_TOOL_TYPES_TOOL_ERROR_NEEDS_HUMAN},
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    if (strcmp(kind, cases[i].name) != 0) continue;
    err->tag = cases[i].tag;
    if (cases[i].tag == BACKSTOP_TOOL_TYPES_TOOL_ERROR_RATE_LIMITED) {
      set_str(&err->val.rate_limited.message, msg);
      err->val.rate_limited.retry_after_ms.is_some = has_wait;
      err->val.rate_limited.retry_after_ms.val = wait;
    } else {
      /* Every other case carries just its message, at the same offset. */
      set_str(&err->val.transient, msg);
    }
    return true;
  }
  return false;
}

static bool invalid(tool_tool_error_t *err, const char *msg) {
  err->tag = BACKSTOP_TOOL_TYPES_TOOL_ERROR_INVALID_INPUT;
  set_str(&err->val.invalid_input, msg);
  return false;
}

bool exports_tool_invoke(tool_string_t *input, tool_output_t *ret, tool_tool_error_t *err) {
  const char *json = (const char *)input->ptr;
  size_t len = input->len;
  bool ok = false;
  char *fail = NULL, *message = NULL, *say = NULL;
  size_t n;

  backstop_tool_host_call_context_t ctx;
  backstop_tool_host_context(&ctx);

  /* `raise` writes to stderr and aborts: how a C tool's bug looks to the
   * host. */
  char *raise = NULL;
  if (json_get_string(json, len, "raise", &raise, &n) == JSON_FOUND) {
    fprintf(stderr, "echo_c: %s\n", raise);
    abort();
  }

  int r = json_get_string(json, len, "fail", &fail, &n);
  if (r == JSON_MALFORMED) { ok = invalid(err, "input is not a JSON object"); goto done; }
  if (r == JSON_WRONG_TYPE) { ok = invalid(err, "`fail` must be a string"); goto done; }
  /* With `until_attempt`, fail only on earlier attempts: the success then
   * shows which attempt the host says this is. */
  uint64_t until = UINT64_MAX;
  json_get_u64(json, len, "until_attempt", &until);
  if (r == JSON_FOUND && ctx.attempt < until) {
    if (json_get_string(json, len, "message", &message, &n) != JSON_FOUND) message = NULL;
    uint64_t wait = 0;
    bool has_wait = json_get_u64(json, len, "retry_after_ms", &wait) == JSON_FOUND;
    if (!named_error(fail, message ? message : "failed as asked", has_wait, wait, err))
      invalid(err, "`fail` names no tool-error case");
    goto done;
  }

  r = json_get_string(json, len, "say", &say, &n);
  if (r == JSON_MALFORMED) { ok = invalid(err, "input is not a JSON object"); goto done; }
  if (r == JSON_WRONG_TYPE) { ok = invalid(err, "`say` must be a string"); goto done; }

  tool_string_t log_msg;
  tool_string_set(&log_msg, "echo called");
  tool_list_tuple2_string_string_t fields = {NULL, 0};
  backstop_tool_host_log(BACKSTOP_TOOL_HOST_LEVEL_INFO, &log_msg, &fields);

  json_out o = {0};
  out_raw(&o, "{\"said\":");
  if (say) out_str(&o, say, n); else out_raw(&o, "null");
  out_raw(&o, ",\"key\":");
  out_str(&o, (const char *)ctx.idempotency_key.ptr, ctx.idempotency_key.len);
  out_fmt(&o, ",\"attempt\":%u,\"deadline_ms\":%llu,\"tool\":", ctx.attempt,
          (unsigned long long)ctx.deadline_ms);
  out_str(&o, (const char *)ctx.tool_name.ptr, ctx.tool_name.len);
  out_raw(&o, ",\"language\":\"c\"}");
  if (o.oom) { free(o.buf); ok = invalid(err, "out of memory"); goto done; }

  ret->value.ptr = (uint8_t *)o.buf;
  ret->value.len = o.len;
  ret->confidence.is_some = true;
  ret->confidence.val = 1.0;
  ok = true;

done:
  backstop_tool_host_call_context_free(&ctx);
  free(fail);
  free(message);
  free(say);
  tool_string_free(input);
  return ok;
}
