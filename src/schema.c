/*-------------------------------------------------------------------------
 *
 * schema.c
 *	  Validate a jsonb value against a JSON Schema (the subset LLM
 *	  structured outputs and tool parameter schemas use).
 *
 * Supported keywords: type (a name or a list), enum, const, properties,
 * required, additionalProperties (a boolean or a schema), items,
 * minItems, maxItems, minLength, maxLength, minimum, maximum, anyOf and
 * allOf.  Other keywords (descriptions, titles, formats, ...) are
 * ignored.  The first violation is reported with its JSON path.
 *
 * Transactions and locks: none; pure computation on jsonb values.  May
 * raise only out-of-memory errors.
 *
 *-------------------------------------------------------------------------
 */
#include "flow_engine.h"

#include "lib/stringinfo.h"
#include "mb/pg_wchar.h"
#include "utils/builtins.h"
#include "utils/jsonb.h"
#include "utils/numeric.h"

static bool fe_valid(JsonbContainer *schema, JsonbValue *v, const char *path, char **why);

static const char *
fe_json_type(JsonbValue *v)
{
	switch (v->type)
	{
		case jbvNull:
			return "null";
		case jbvString:
			return "string";
		case jbvNumeric:
			return "number";
		case jbvBool:
			return "boolean";
		case jbvBinary:
			return JsonContainerIsArray(v->val.binary.data) ? "array" : "object";
		default:
			return "value";
	}
}

static bool
fe_is_integer(JsonbValue *v)
{
	Numeric		n = v->val.numeric;
	Numeric		f;

	if (numeric_is_nan(n) || numeric_is_inf(n))
		return false;
	f = DatumGetNumeric(DirectFunctionCall1(numeric_floor, NumericGetDatum(n)));
	return DatumGetBool(DirectFunctionCall2(numeric_eq, NumericGetDatum(n), NumericGetDatum(f)));
}

static bool
fe_type_matches(const char *t, JsonbValue *v)
{
	const char *actual = fe_json_type(v);

	if (strcmp(t, "integer") == 0)
		return v->type == jbvNumeric && fe_is_integer(v);
	return strcmp(t, actual) == 0;
}

static double
fe_num(JsonbValue *v)
{
	return DatumGetFloat8(DirectFunctionCall1(numeric_float8, NumericGetDatum(v->val.numeric)));
}

static bool
fe_key(JsonbContainer *c, const char *key, JsonbValue *out)
{
	return getKeyJsonValueFromContainer(c, key, strlen(key), out) != NULL;
}

static char *
fe_value_text(JsonbValue *v)
{
	Jsonb	   *j = JsonbValueToJsonb(v);

	return JsonbToCString(NULL, &j->root, VARSIZE(j));
}

static bool
fe_equal(JsonbValue *a, JsonbValue *b)
{
	return strcmp(fe_value_text(a), fe_value_text(b)) == 0;
}

static bool
fe_fail(char **why, const char *path, const char *fmt,...) pg_attribute_printf(3, 4);

static bool
fe_fail(char **why, const char *path, const char *fmt,...)
{
	StringInfoData b;
	va_list		ap;

	initStringInfo(&b);
	appendStringInfo(&b, "%s: ", path);
	for (;;)
	{
		int			needed;

		va_start(ap, fmt);
		needed = appendStringInfoVA(&b, fmt, ap);
		va_end(ap);
		if (needed == 0)
			break;
		enlargeStringInfo(&b, needed);
	}
	*why = b.data;
	return false;
}

static bool
fe_check_type(JsonbContainer *schema, JsonbValue *v, const char *path, char **why)
{
	JsonbValue	t;

	if (!fe_key(schema, "type", &t))
		return true;
	if (t.type == jbvString)
	{
		char	   *name = pnstrdup(t.val.string.val, t.val.string.len);

		if (!fe_type_matches(name, v))
			return fe_fail(why, path, "expected %s, got %s", name, fe_json_type(v));
		return true;
	}
	if (t.type == jbvBinary && JsonContainerIsArray(t.val.binary.data))
	{
		JsonbIterator *it = JsonbIteratorInit(t.val.binary.data);
		JsonbValue	e;
		JsonbIteratorToken tok;
		StringInfoData names;

		initStringInfo(&names);
		while ((tok = JsonbIteratorNext(&it, &e, true)) != WJB_DONE)
		{
			if (tok != WJB_ELEM || e.type != jbvString)
				continue;
			if (fe_type_matches(pnstrdup(e.val.string.val, e.val.string.len), v))
				return true;
			appendStringInfo(&names, "%s%.*s", names.len ? " or " : "",
							 e.val.string.len, e.val.string.val);
		}
		return fe_fail(why, path, "expected %s, got %s", names.data, fe_json_type(v));
	}
	return true;
}

static bool
fe_check_enum(JsonbContainer *schema, JsonbValue *v, const char *path, char **why)
{
	JsonbValue	e;

	if (fe_key(schema, "const", &e) && !fe_equal(&e, v))
		return fe_fail(why, path, "expected %s", fe_value_text(&e));
	if (fe_key(schema, "enum", &e) && e.type == jbvBinary &&
		JsonContainerIsArray(e.val.binary.data))
	{
		JsonbIterator *it = JsonbIteratorInit(e.val.binary.data);
		JsonbValue	m;
		JsonbIteratorToken tok;

		while ((tok = JsonbIteratorNext(&it, &m, true)) != WJB_DONE)
			if (tok == WJB_ELEM && fe_equal(&m, v))
				return true;
		return fe_fail(why, path, "%s is not one of %s", fe_value_text(v), fe_value_text(&e));
	}
	return true;
}

static bool
fe_check_bounds(JsonbContainer *schema, JsonbValue *v, const char *path, char **why)
{
	JsonbValue	b;

	if (v->type == jbvNumeric)
	{
		double		x = fe_num(v);

		if (fe_key(schema, "minimum", &b) && b.type == jbvNumeric && x < fe_num(&b))
			return fe_fail(why, path, "%g is less than the minimum %g", x, fe_num(&b));
		if (fe_key(schema, "maximum", &b) && b.type == jbvNumeric && x > fe_num(&b))
			return fe_fail(why, path, "%g is greater than the maximum %g", x, fe_num(&b));
	}
	if (v->type == jbvString)
	{
		int			len = pg_mbstrlen_with_len(v->val.string.val, v->val.string.len);

		if (fe_key(schema, "minLength", &b) && b.type == jbvNumeric && len < fe_num(&b))
			return fe_fail(why, path, "string is shorter than %g characters", fe_num(&b));
		if (fe_key(schema, "maxLength", &b) && b.type == jbvNumeric && len > fe_num(&b))
			return fe_fail(why, path, "string is longer than %g characters", fe_num(&b));
	}
	if (v->type == jbvBinary && JsonContainerIsArray(v->val.binary.data))
	{
		int			n = JsonContainerSize(v->val.binary.data);

		if (fe_key(schema, "minItems", &b) && b.type == jbvNumeric && n < fe_num(&b))
			return fe_fail(why, path, "array has fewer than %g items", fe_num(&b));
		if (fe_key(schema, "maxItems", &b) && b.type == jbvNumeric && n > fe_num(&b))
			return fe_fail(why, path, "array has more than %g items", fe_num(&b));
	}
	return true;
}

static bool
fe_check_object(JsonbContainer *schema, JsonbContainer *obj, const char *path, char **why)
{
	JsonbValue	props,
				req,
				addl,
				m;
	bool		has_props = fe_key(schema, "properties", &props) && props.type == jbvBinary;
	bool		has_addl = fe_key(schema, "additionalProperties", &addl);
	JsonbIterator *it;
	JsonbIteratorToken tok;
	JsonbValue	k;

	if (fe_key(schema, "required", &req) && req.type == jbvBinary &&
		JsonContainerIsArray(req.val.binary.data))
	{
		it = JsonbIteratorInit(req.val.binary.data);
		while ((tok = JsonbIteratorNext(&it, &m, true)) != WJB_DONE)
			if (tok == WJB_ELEM && m.type == jbvString &&
				getKeyJsonValueFromContainer(obj, m.val.string.val, m.val.string.len, &k) == NULL)
				return fe_fail(why, path, "required property \"%.*s\" is missing",
							   m.val.string.len, m.val.string.val);
	}
	it = JsonbIteratorInit(obj);
	while ((tok = JsonbIteratorNext(&it, &k, true)) != WJB_DONE)
	{
		JsonbValue	sub,
					val;
		char	   *name;
		char	   *subpath;

		if (tok != WJB_KEY)
			continue;
		name = pnstrdup(k.val.string.val, k.val.string.len);
		tok = JsonbIteratorNext(&it, &val, true);
		subpath = psprintf("%s.%s", path, name);
		if (has_props &&
			getKeyJsonValueFromContainer(props.val.binary.data, name, strlen(name), &sub) != NULL)
		{
			if (sub.type == jbvBinary && !fe_valid(sub.val.binary.data, &val, subpath, why))
				return false;
		}
		else if (has_addl)
		{
			if (addl.type == jbvBool && !addl.val.boolean)
				return fe_fail(why, path, "property \"%s\" is not allowed", name);
			if (addl.type == jbvBinary && !fe_valid(addl.val.binary.data, &val, subpath, why))
				return false;
		}
	}
	return true;
}

static bool
fe_check_items(JsonbContainer *schema, JsonbContainer *arr, const char *path, char **why)
{
	JsonbValue	items,
				e;
	JsonbIterator *it;
	JsonbIteratorToken tok;
	int			i = 0;

	if (!fe_key(schema, "items", &items) || items.type != jbvBinary ||
		!JsonContainerIsObject(items.val.binary.data))
		return true;
	it = JsonbIteratorInit(arr);
	while ((tok = JsonbIteratorNext(&it, &e, true)) != WJB_DONE)
	{
		if (tok != WJB_ELEM)
			continue;
		if (!fe_valid(items.val.binary.data, &e, psprintf("%s[%d]", path, i), why))
			return false;
		i++;
	}
	return true;
}

static bool
fe_check_combinators(JsonbContainer *schema, JsonbValue *v, const char *path, char **why)
{
	JsonbValue	list,
				s;
	JsonbIterator *it;
	JsonbIteratorToken tok;

	if (fe_key(schema, "allOf", &list) && list.type == jbvBinary)
	{
		it = JsonbIteratorInit(list.val.binary.data);
		while ((tok = JsonbIteratorNext(&it, &s, true)) != WJB_DONE)
			if (tok == WJB_ELEM && s.type == jbvBinary &&
				!fe_valid(s.val.binary.data, v, path, why))
				return false;
	}
	if (fe_key(schema, "anyOf", &list) && list.type == jbvBinary)
	{
		char	   *first = NULL;

		it = JsonbIteratorInit(list.val.binary.data);
		while ((tok = JsonbIteratorNext(&it, &s, true)) != WJB_DONE)
		{
			char	   *w = NULL;

			if (tok != WJB_ELEM || s.type != jbvBinary)
				continue;
			if (fe_valid(s.val.binary.data, v, path, &w))
				return true;
			if (first == NULL)
				first = w;
		}
		return fe_fail(why, path, "matches none of anyOf (first: %s)", first ? first : "no schema");
	}
	return true;
}

static bool
fe_valid(JsonbContainer *schema, JsonbValue *v, const char *path, char **why)
{
	if (!JsonContainerIsObject(schema))
		return true;
	if (!fe_check_type(schema, v, path, why) ||
		!fe_check_enum(schema, v, path, why) ||
		!fe_check_bounds(schema, v, path, why) ||
		!fe_check_combinators(schema, v, path, why))
		return false;
	if (v->type == jbvBinary && JsonContainerIsObject(v->val.binary.data))
		return fe_check_object(schema, v->val.binary.data, path, why);
	if (v->type == jbvBinary && JsonContainerIsArray(v->val.binary.data))
		return fe_check_items(schema, v->val.binary.data, path, why);
	return true;
}

/*
 * Does `value` satisfy `schema`?  If not, *why says where and how, as
 * "$.path: what is wrong".
 */
bool
FeSchemaValidate(Jsonb *schema, Jsonb *value, char **why)
{
	JsonbValue	v;

	if (!JB_ROOT_IS_OBJECT(schema))
		return true;
	if (JB_ROOT_IS_SCALAR(value))
	{
		if (!JsonbExtractScalar(&value->root, &v))
			return true;
	}
	else
	{
		v.type = jbvBinary;
		v.val.binary.data = &value->root;
		v.val.binary.len = VARSIZE(value) - VARHDRSZ;
	}
	return fe_valid(&schema->root, &v, "$", why);
}
