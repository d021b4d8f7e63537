/* __NAME__: a Backstop tool (made by `backstop new`). It returns the text it
 * is given and its length in bytes; replace `exports_tool_invoke` with the
 * tool's own work. */
#include "tool.h"
#include "json.h"

void exports_tool_describe(tool_tool_info_t *ret) {
  tool_string_dup(&ret->name, "__NAME__");
  tool_string_dup(&ret->description, "Returns `text` and its length in bytes.");
  /* The host checks every call's input against this schema before the tool
   * runs: declare what the tool really accepts. */
  tool_string_dup(&ret->input_schema,
                  "{\"type\":\"object\",\"properties\":{\"text\":{\"type\":\"string\"}},"
                  "\"required\":[\"text\"]}");
  ret->output_schema.is_some = false;
  ret->effect = BACKSTOP_TOOL_TYPES_EFFECT_READ_ONLY;
}

bool exports_tool_invoke(tool_string_t *input, tool_output_t *ret, tool_tool_error_t *err) {
  char *text = NULL;
  size_t n = 0;
  bool ok = json_get_string((const char *)input->ptr, input->len, "text", &text, &n) == JSON_FOUND;
  if (ok) {
    json_out o = {0};
    out_raw(&o, "{\"text\":");
    out_str(&o, text, n);
    out_fmt(&o, ",\"length\":%zu}", n);
    if (o.oom) {
      free(o.buf);
      err->tag = BACKSTOP_TOOL_TYPES_TOOL_ERROR_TRANSIENT;
      tool_string_dup(&err->val.transient, "out of memory");
      ok = false;
    } else {
      ret->value.ptr = (uint8_t *)o.buf; /* the host frees it */
      ret->value.len = o.len;
      ret->confidence.is_some = false;
    }
  } else {
    err->tag = BACKSTOP_TOOL_TYPES_TOOL_ERROR_INVALID_INPUT;
    tool_string_dup(&err->val.invalid_input, "`text` (a string) is required");
  }
  free(text);
  tool_string_free(input); /* the input belongs to the tool */
  return ok;
}
