/* units_c: a unit converter written with cJSON (vendor/cjson), the C side of
 * the guide's exercise: numbers in and out, booleans, nested values, and
 * invalid units refused as invalid-input.
 *
 * Input:  {"value": 1.5, "from": "km", "to": "mi", "round": true?}
 * Output: {"value": 0.932..., "unit": "mi", "input": {"value": 1.5, "unit": "km"}} */
#include "tool.h"
#include "cJSON.h"

#include <math.h>
#include <string.h>

static const struct {
  const char *name;
  double meters;
} UNITS[] = {{"m", 1.0}, {"km", 1000.0}, {"mi", 1609.344}, {"ft", 0.3048}, {"in", 0.0254}};

static const double *meters_per(const char *unit) {
  for (size_t i = 0; i < sizeof UNITS / sizeof UNITS[0]; i++)
    if (strcmp(unit, UNITS[i].name) == 0) return &UNITS[i].meters;
  return NULL;
}

void exports_tool_describe(tool_tool_info_t *ret) {
  tool_string_dup(&ret->name, "units-c");
  tool_string_dup(&ret->description,
                  "Converts a length `value` from unit `from` to unit `to` (m, km, mi, ft, in); "
                  "`round` rounds to 3 decimals.");
  tool_string_dup(&ret->input_schema,
                  "{\"type\":\"object\",\"required\":[\"value\",\"from\",\"to\"],\"properties\":{"
                  "\"value\":{\"type\":\"number\"},\"from\":{\"type\":\"string\"},"
                  "\"to\":{\"type\":\"string\"},\"round\":{\"type\":\"boolean\"}}}");
  ret->output_schema.is_some = false;
  ret->effect = BACKSTOP_TOOL_TYPES_EFFECT_READ_ONLY;
}

static bool refuse(tool_tool_error_t *err, const char *msg) {
  err->tag = BACKSTOP_TOOL_TYPES_TOOL_ERROR_INVALID_INPUT;
  tool_string_dup(&err->val.invalid_input, msg);
  return false;
}

bool exports_tool_invoke(tool_string_t *input, tool_output_t *ret, tool_tool_error_t *err) {
  bool ok = false;
  cJSON *out = NULL;
  cJSON *in = cJSON_ParseWithLength((const char *)input->ptr, input->len);
  if (!in) {
    ok = refuse(err, "input is not JSON");
    goto done;
  }
  const cJSON *value = cJSON_GetObjectItemCaseSensitive(in, "value");
  const cJSON *from = cJSON_GetObjectItemCaseSensitive(in, "from");
  const cJSON *to = cJSON_GetObjectItemCaseSensitive(in, "to");
  const cJSON *round = cJSON_GetObjectItemCaseSensitive(in, "round");
  if (!cJSON_IsNumber(value) || !isfinite(value->valuedouble)) {
    ok = refuse(err, "`value` must be a finite number");
    goto done;
  }
  if (!cJSON_IsString(from) || !cJSON_IsString(to)) {
    ok = refuse(err, "`from` and `to` must be unit names");
    goto done;
  }
  const double *f = meters_per(from->valuestring), *t = meters_per(to->valuestring);
  if (!f || !t) {
    ok = refuse(err, "unknown unit: use m, km, mi, ft or in");
    goto done;
  }
  double converted = value->valuedouble * *f / *t;
  if (cJSON_IsTrue(round)) converted = nearbyint(converted * 1000.0) / 1000.0;

  out = cJSON_CreateObject();
  cJSON *echo = cJSON_CreateObject();
  if (!out || !echo || !cJSON_AddItemToObject(out, "input", echo) ||
      !cJSON_AddNumberToObject(out, "value", converted) ||
      !cJSON_AddStringToObject(out, "unit", to->valuestring) ||
      !cJSON_AddNumberToObject(echo, "value", value->valuedouble) ||
      !cJSON_AddStringToObject(echo, "unit", from->valuestring)) {
    err->tag = BACKSTOP_TOOL_TYPES_TOOL_ERROR_TRANSIENT;
    tool_string_dup(&err->val.transient, "out of memory");
    goto done;
  }
  char *text = cJSON_PrintUnformatted(out);
  if (!text) {
    err->tag = BACKSTOP_TOOL_TYPES_TOOL_ERROR_TRANSIENT;
    tool_string_dup(&err->val.transient, "out of memory");
    goto done;
  }
  ret->value.ptr = (uint8_t *)text; /* malloc'ed by cJSON: the host frees it */
  ret->value.len = strlen(text);
  ret->confidence.is_some = false;
  ok = true;

done:
  cJSON_Delete(in);
  cJSON_Delete(out);
  tool_string_free(input); /* the input belongs to the tool */
  return ok;
}
