/* oapi.h: real responses held against schema/openapi.yaml in the server
 * tests.  The document (as the daemon serves it at GET /openapi.yaml) is
 * read with libyaml into a cJSON tree, and a JSON value is checked against
 * one of its components.schemas by the subset of OpenAPI 3.0 schema
 * objects the file uses:
 *   $ref ("#/..."), type (object, array, string, integer, number,
 *   boolean), nullable, enum, required, properties, additionalProperties
 *   (false or a schema), items, minItems, maxItems, minimum, maximum,
 *   exclusiveMinimum / exclusiveMaximum (booleans, 3.0 style), minLength,
 *   maxLength, pattern (POSIX extended), allOf, anyOf, oneOf (exactly one).
 * Other keywords (format, description, default, example, discriminator) do
 * not constrain.  YAML plain scalars that read as numbers, true/false or
 * null become those; everything else is a string; mapping keys are strings. */
#ifndef FLOWD_TEST_OAPI_H
#define FLOWD_TEST_OAPI_H

#include <cjson/cJSON.h>
#include <stddef.h>

/* The YAML text (len bytes) as a cJSON tree (caller deletes), NULL with a
 * message in err when it does not parse. */
cJSON *oapi_parse(const char *yaml, size_t len, char *err, size_t errlen);

/* 0 when value satisfies components.schemas.<name> of doc; -1 with the
 * first violation in err ("$.reference.rows: expected integer, got
 * string"). */
int oapi_check(const cJSON *doc, const char *name, const cJSON *value, char *err, size_t errlen);

#endif
