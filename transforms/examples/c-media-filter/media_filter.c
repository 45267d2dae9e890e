// media-filter in C: keeps Snowplow media events (event vendor + event-name regex from config).
// The same transform as transforms/media-filter (Rust), against the same WIT world, to show that
// the world is usable from any language that wit-bindgen (or another component toolchain)
// supports. Build: `make` (see Makefile and ../../README.md).
//
// Settings: `vendor` (default com.snowplowanalytics.snowplow.media), `event_name` (a POSIX
// extended regex, default `_event$`).

#include <regex.h>
#include <stdlib.h>
#include <string.h>

#include "weir_transform.h"

#define EVENT_VENDOR 125
#define EVENT_NAME 126
#define NAME_MAX_LEN 255

static char *vendor;
static size_t vendor_len;
static regex_t event_name;

// musl's regex asserts; its __assert_fail prints with stdio, which would import WASI. Ours tells
// weir why we are about to trap (the failed record's reason), then traps.
_Noreturn void __assert_fail(const char *expr, const char *file, int line, const char *func) {
  weir_transform_string_t msg;
  weir_transform_string_set(&msg, expr);
  weir_transform_host_panicking(&msg);
  __builtin_trap();
}

static char *dup_str(const weir_transform_string_t *s) {
  char *out = malloc(s->len + 1);
  memcpy(out, s->ptr, s->len);
  out[s->len] = 0;
  return out;
}

static bool is(const weir_transform_string_t *s, const char *lit) {
  return s->len == strlen(lit) && memcmp(s->ptr, lit, s->len) == 0;
}

// Sets `err` to a + b + c (no stdio: printf would pull in WASI imports, which weir refuses).
static bool fail3(weir_transform_string_t *err, const char *a, const char *b, const char *c) {
  size_t la = strlen(a), lb = strlen(b), lc = strlen(c);
  err->ptr = malloc(la + lb + lc);
  err->len = la + lb + lc;
  memcpy(err->ptr, a, la);
  memcpy(err->ptr + la, b, lb);
  memcpy(err->ptr + la + lb, c, lc);
  return false;
}

bool exports_weir_transform_transform_init(weir_transform_list_tuple2_string_string_t *config,
                                           exports_weir_transform_transform_settings_t *ret,
                                           weir_transform_string_t *err) {
  char *pattern = NULL;
  free(vendor);
  vendor = NULL;
  for (size_t i = 0; i < config->len; i++) {
    weir_transform_tuple2_string_string_t *kv = &config->ptr[i];
    if (is(&kv->f0, "vendor")) {
      free(vendor);
      vendor = dup_str(&kv->f1);
    } else if (is(&kv->f0, "event_name")) {
      free(pattern);
      pattern = dup_str(&kv->f1);
    } else {
      char *k = dup_str(&kv->f0);
      fail3(err, "unknown setting `", k, "`; expected one of `vendor`, `event_name`");
      free(k);
      free(pattern);
      weir_transform_list_tuple2_string_string_free(config);
      return false;
    }
  }
  weir_transform_list_tuple2_string_string_free(config);
  if (!vendor) vendor = strdup("com.snowplowanalytics.snowplow.media");
  vendor_len = strlen(vendor);
  int rc = regcomp(&event_name, pattern ? pattern : "_event$", REG_EXTENDED | REG_NOSUB);
  free(pattern);
  if (rc != 0) {
    // (regerror would pull in printf, and with it WASI imports.)
    const char *why = rc == REG_EPAREN   ? "unbalanced parenthesis"
                      : rc == REG_EBRACK ? "unbalanced bracket"
                      : rc == REG_EBRACE ? "unbalanced brace"
                      : rc == REG_BADRPT ? "repetition operator in the wrong place"
                      : rc == REG_EESCAPE ? "trailing backslash"
                                          : "syntax error";
    return fail3(err, "setting `event_name`: invalid regex: ", why, "");
  }
  // Ask weir for the two fields we read, not whole events.
  ret->fields.is_some = true;
  ret->fields.val.len = 2;
  ret->fields.val.ptr = malloc(2 * sizeof(uint32_t));
  ret->fields.val.ptr[0] = EVENT_VENDOR;
  ret->fields.val.ptr[1] = EVENT_NAME;
  return true;
}

void exports_weir_transform_transform_process(exports_weir_transform_transform_batch_t *batch,
                                              exports_weir_transform_transform_output_t *ret) {
  memset(ret, 0, sizeof *ret);  // values and keys omitted: outputs keep their payloads
  const weir_transform_types_column_t *f = &batch->fields;
  size_t n = f->offsets.len ? (f->offsets.len - 1) / 2 : 0;
  ret->sources.ptr = malloc((n ? n : 1) * sizeof(uint32_t));
  ret->errors.ptr = NULL;
  char name[NAME_MAX_LEN + 1];
  for (size_t i = 0; i < n; i++) {
    const uint8_t *v = f->data.ptr + f->offsets.ptr[2 * i];
    size_t v_len = f->offsets.ptr[2 * i + 1] - f->offsets.ptr[2 * i];
    const uint8_t *e = f->data.ptr + f->offsets.ptr[2 * i + 1];
    size_t e_len = f->offsets.ptr[2 * i + 2] - f->offsets.ptr[2 * i + 1];
    if (v_len != vendor_len || memcmp(v, vendor, v_len) != 0) continue;
    if (e_len > NAME_MAX_LEN) {
      // A per-record error: this record goes to the failure sink, the others go on.
      ret->errors.ptr = realloc(ret->errors.ptr, (ret->errors.len + 1) * sizeof *ret->errors.ptr);
      weir_transform_types_record_error_t *err = &ret->errors.ptr[ret->errors.len++];
      err->index = (uint32_t)i;
      weir_transform_string_dup(&err->message, "event_name longer than 255 bytes");
      continue;
    }
    memcpy(name, e, e_len);
    name[e_len] = 0;
    if (regexec(&event_name, name, 0, NULL, 0) == 0) ret->sources.ptr[ret->sources.len++] = (uint32_t)i;
  }
  exports_weir_transform_transform_batch_free(batch);
}

void exports_weir_transform_transform_flush(exports_weir_transform_transform_emitted_t *ret) {
  memset(ret, 0, sizeof *ret);
}
