# flow_engine — PGXS build.
EXTENSION    = flow_engine
EXTVERSION   = 0.4.0
MODULE_big   = flow_engine
OBJS         = src/module.o src/definition.o src/expr.o src/engine.o \
               src/catalog.o src/schema.o src/worker.o src/http.o src/wait.o \
               src/sql_api.o
DATA         = $(wildcard sql/flow_engine--*.sql)
DOCS         =

# Tests live in test/sql with expected output in top-level expected/.
TESTS        = $(sort $(wildcard test/sql/*.sql))
REGRESS      = $(patsubst test/sql/%.sql,%,$(TESTS))
REGRESS_OPTS = --inputdir=test

PG_CONFIG   ?= pg_config
PG_CPPFLAGS  = -Isrc -DFE_VERSION=\"$(EXTVERSION)\" $(shell pkg-config --cflags duktape 2>/dev/null)
PG_CFLAGS    = -Wall -Wextra -Werror -Wno-unused-parameter -Wno-missing-field-initializers
SHLIB_LINK   = $(shell pkg-config --libs duktape 2>/dev/null || echo -lduktape) \
               $(shell pkg-config --libs libcurl 2>/dev/null || echo -lcurl)

# No LLVM bitcode: a fresh machine need not have clang.
override with_llvm = no

PGXS := $(shell $(PG_CONFIG) --pgxs)
include $(PGXS)

# Every object depends on the headers and on the version set here.
$(OBJS): $(wildcard src/*.h) Makefile

# One version everywhere: the Makefile, the control file and META.json.
.PHONY: versioncheck
versioncheck:
	@grep -q "default_version = '$(EXTVERSION)'" $(EXTENSION).control || \
	  { echo "flow_engine.control does not say $(EXTVERSION)"; exit 1; }
	@grep -q '"version": "$(EXTVERSION)"' META.json || \
	  { echo "META.json does not say $(EXTVERSION)"; exit 1; }
	@ls sql/$(EXTENSION)--$(EXTVERSION).sql sql/$(EXTENSION)--*--$(EXTVERSION).sql 2>/dev/null | grep -q . || \
	  { echo "no install or upgrade script reaches $(EXTVERSION)"; exit 1; }
	@echo "version $(EXTVERSION) agrees"
