/* __NAME__: a Backstop tool (made by `backstop new`). It returns the text it
 * is given and its length in bytes; replace `exports_tool_invoke` with the
 * tool's own work. JSON in and out goes through cJSON (plugins/c/vendor):
 * numbers, booleans, null and nested values included. */
#include "tool.h"
#include "cJSON.h"

#include <string.h>

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

static bool fail(tool_tool_error_t *err, uint8_t tag, const char *msg) {
  err->tag = tag;
  /* Every case but rate-limited carries just its message, at one offset. */
  tool_string_dup(&err->val.invalid_input, msg);
  return false;
}

bool exports_tool_invoke(tool_string_t *input, tool_output_t *ret, tool_tool_error_t *err) {
  bool ok = false;
  cJSON *out = NULL;
  cJSON *in = cJSON_ParseWithLength((const char *)input->ptr, input->len);
  const cJSON *text = cJSON_GetObjectItemCaseSensitive(in, "text");
  if (!cJSON_IsString(text)) {
    ok = fail(err, BACKSTOP_TOOL_TYPES_TOOL_ERROR_INVALID_INPUT, "`text` (a string) is required");
    goto done;
  }
  out = cJSON_CreateObject();
  char *printed = NULL;
  if (!out || !cJSON_AddStringToObject(out, "text", text->valuestring) ||
      !cJSON_AddNumberToObject(out, "length", (double)strlen(text->valuestring)) ||
      !(printed = cJSON_PrintUnformatted(out))) {
    ok = fail(err, BACKSTOP_TOOL_TYPES_TOOL_ERROR_TRANSIENT, "out of memory");
    goto done;
  }
  ret->value.ptr = (uint8_t *)printed; /* malloc'ed: the host frees it */
  ret->value.len = strlen(printed);
  ret->confidence.is_some = false;
  ok = true;

done:
  cJSON_Delete(in);
  cJSON_Delete(out);
  tool_string_free(input); /* the input belongs to the tool */
  return ok;
}
