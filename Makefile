# flowd build.  Out-of-tree objects under build/<variant>/, -MMD -MP
# dependency files, and a flags stamp so a change of flags rebuilds.
#   make            build everything (release variant)
#   make test       the whole test suite (core in float32 and float64, server)
#   make asan       the whole suite under AddressSanitizer + UBSan
#   make bench      the benchmarks
#   make run        migrate a database under data/, start flowd on 127.0.0.1
#   make deps       install the Debian packages the build needs (as root)
#   make MPI=1|0    with or without MPI (data-parallel flowd train); default:
#                   with it where OpenMPI is installed (release variant only)

V        ?= rel
BUILD    := build/$(V)
CC       ?= gcc
PKGS     := openblas libcjson sqlite3 libmicrohttpd libcurl zlib libpng libcrypto
PKG_CFLAGS := $(shell pkg-config --cflags $(PKGS) 2>/dev/null)
PKG_LIBS   := $(shell pkg-config --libs $(PKGS) 2>/dev/null)
ifeq ($(strip $(PKG_LIBS)),)
  # fallback where a package ships no .pc file
  PKG_CFLAGS := -I/usr/include/x86_64-linux-gnu/openblas-pthread
  PKG_LIBS   := -lopenblas -lcjson -lsqlite3 -lmicrohttpd -lcurl -lz -lpng -lcrypto
endif
CORE_LIBS := $(shell pkg-config --libs openblas libcjson zlib 2>/dev/null || echo -lopenblas -lcjson -lz) -lm -lmvec
# the server tests read schema/openapi.yaml with libyaml (tests/server/oapi.c)
TEST_LIBS := $(shell pkg-config --libs yaml-0.1 2>/dev/null || echo -lyaml)

# MPI: server/mpi.c with OpenMPI (docs/scale-out.md); detected through its
# pkg-config file for the release build, off for the sanitizer variants
ifeq ($(V),rel)
  MPI ?= $(shell pkg-config --exists ompi-c 2>/dev/null && echo 1 || echo 0)
else
  MPI ?= 0
endif
ifeq ($(MPI),1)
  MPI_CFLAGS := -DFLOWD_MPI $(shell pkg-config --cflags ompi-c 2>/dev/null)
  MPI_LIBS   := $(shell pkg-config --libs ompi-c 2>/dev/null || echo -lmpi)
endif

OPT      ?= -O2
CFLAGS_BASE := -std=c11 -D_GNU_SOURCE -g $(OPT) -Wall -Wextra -Wno-unused-parameter \
               -fno-strict-aliasing $(PKG_CFLAGS)
ifeq ($(V),asan)
  OPT    := -O1
  SAN    := -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined
endif
ifeq ($(V),tsan)
  OPT    := -O1
  SAN    := -fsanitize=thread -O1 -fno-omit-frame-pointer
endif
CFLAGS_ALL := $(CFLAGS_BASE) $(SAN) $(CFLAGS)
# the core's numeric loops: -O3 vectorises them (the elementwise kernels are
# also cloned for AVX2, core/kern.h); no errno from libm so sqrt vectorises.
# Sanitizer builds keep their -O1.
CORE_OPT := $(if $(SAN),,-O3) -fno-math-errno
LDFLAGS_ALL := $(SAN) $(LDFLAGS) -pthread

CORE_SRC  := $(wildcard core/*.c)
CORE_F32  := $(CORE_SRC:%.c=$(BUILD)/f32/%.o)
CORE_F64  := $(CORE_SRC:%.c=$(BUILD)/f64/%.o)
TCORE_SRC := tests/runner.c $(wildcard tests/core/*.c)
TCORE_F32 := $(TCORE_SRC:%.c=$(BUILD)/f32/%.o)
TCORE_F64 := $(TCORE_SRC:%.c=$(BUILD)/f64/%.o)
BENCH_SRC := $(wildcard bench/*.c)
# common/: code shared by flowd and flowctl that core/ must not hold (libpng)
COMMON_OBJ := $(patsubst %.c,$(BUILD)/f32/%.o,$(wildcard common/*.c))
SERVER_SRC := $(wildcard server/*.c)
SERVER_OBJ := $(SERVER_SRC:%.c=$(BUILD)/f32/%.o) $(COMMON_OBJ) $(BUILD)/gen/migrations.o $(BUILD)/gen/assets.o
SERVER_LIB_OBJ := $(filter-out $(BUILD)/f32/server/main.o,$(SERVER_OBJ))
TSERVER_SRC := tests/runner.c $(wildcard tests/server/*.c)
TSERVER_OBJ := $(TSERVER_SRC:%.c=$(BUILD)/f32/%.o)
CLIENT_SRC := $(wildcard client/*.c)
CLIENT_OBJ := $(CLIENT_SRC:%.c=$(BUILD)/f32/%.o) $(COMMON_OBJ)

.PHONY: all test asan bench bench-http bench-daemon run deps clean
all: $(BUILD)/libflowcore.a $(BUILD)/test_core $(BUILD)/test_core_f64 $(BUILD)/flowd \
     $(BUILD)/test_server $(BUILD)/flowctl

$(BUILD)/flags: FORCE
	@mkdir -p $(@D)
	@echo '$(CC) $(CFLAGS_ALL) $(CORE_OPT) $(LDFLAGS_ALL) $(MPI_CFLAGS)' | cmp -s - $@ || echo '$(CC) $(CFLAGS_ALL) $(CORE_OPT) $(LDFLAGS_ALL) $(MPI_CFLAGS)' > $@
FORCE:

$(CORE_F32) $(CORE_F64): CFLAGS_ALL += $(CORE_OPT)
$(BUILD)/f32/server/mpi.o: CFLAGS_ALL += $(MPI_CFLAGS)
# tests/server/test_mpi.c: skip, not fail, where MPI is left out on purpose
# (MPI=0, or a sanitizer variant)
$(BUILD)/f32/tests/server/test_mpi.o: CFLAGS_ALL += -DFLOWD_TEST_VARIANT='"$(V)"' \
  $(if $(filter 0,$(MPI)),$(if $(filter command line environment,$(origin MPI)),-DFLOWD_MPI_OFF_BY_CHOICE))
$(BUILD)/f32/%.o: %.c $(BUILD)/flags
	@mkdir -p $(@D)
	$(CC) $(CFLAGS_ALL) -MMD -MP -c $< -o $@
$(BUILD)/f64/%.o: %.c $(BUILD)/flags
	@mkdir -p $(@D)
	$(CC) $(CFLAGS_ALL) -DNF_DOUBLE -MMD -MP -c $< -o $@

$(BUILD)/libflowcore.a: $(CORE_F32)
	ar rcs $@ $^
$(BUILD)/libflowcore_f64.a: $(CORE_F64)
	ar rcs $@ $^

$(BUILD)/test_core: $(TCORE_F32) $(BUILD)/libflowcore.a
	$(CC) $(LDFLAGS_ALL) -o $@ $(TCORE_F32) $(BUILD)/libflowcore.a $(CORE_LIBS)
$(BUILD)/test_core_f64: $(TCORE_F64) $(BUILD)/libflowcore_f64.a
	$(CC) $(LDFLAGS_ALL) -o $@ $(TCORE_F64) $(BUILD)/libflowcore_f64.a $(CORE_LIBS)

$(BUILD)/flowd: $(SERVER_OBJ) $(BUILD)/libflowcore.a
	$(CC) $(LDFLAGS_ALL) -o $@ $(SERVER_OBJ) $(BUILD)/libflowcore.a $(PKG_LIBS) $(MPI_LIBS) -lm -lmvec

# flowctl, the command-line client: libcurl + cJSON, core's .npy module
# (libflowcore.a), and common/picture.c for -o out.png
$(BUILD)/flowctl: $(CLIENT_OBJ) $(BUILD)/libflowcore.a
	$(CC) $(LDFLAGS_ALL) -o $@ $(CLIENT_OBJ) $(BUILD)/libflowcore.a $(PKG_LIBS) -lm -lmvec

$(BUILD)/gen/migrations.c: $(wildcard migrations/*.sql) tools/embed_migrations.sh
	@mkdir -p $(@D)
	sh tools/embed_migrations.sh migrations > $@.tmp && mv $@.tmp $@
$(BUILD)/gen/migrations.o: $(BUILD)/gen/migrations.c $(BUILD)/flags
	$(CC) $(CFLAGS_ALL) -c $< -o $@
ASSETS := schema/openapi.yaml $(wildcard server/assets/*)
# GET /openapi.json: the YAML converted at build time by tools/yaml2json.c,
# with the reader the server tests use (tests/server/oapi.c, libyaml)
$(BUILD)/yaml2json: $(BUILD)/f32/tools/yaml2json.o $(BUILD)/f32/tests/server/oapi.o
	$(CC) $(LDFLAGS_ALL) -o $@ $^ $(PKG_LIBS) $(TEST_LIBS)
$(BUILD)/gen/openapi.json: schema/openapi.yaml $(BUILD)/yaml2json
	@mkdir -p $(@D)
	$(BUILD)/yaml2json schema/openapi.yaml > $@.tmp && mv $@.tmp $@
$(BUILD)/gen/assets.c: $(ASSETS) $(BUILD)/gen/openapi.json tools/embed_file.sh
	@mkdir -p $(@D)
	{ sh tools/embed_file.sh fd_asset_openapi schema/openapi.yaml; \
	  sh tools/embed_file.sh fd_asset_openapi_json $(BUILD)/gen/openapi.json; \
	  if [ -f server/assets/index.html ]; then sh tools/embed_file.sh fd_asset_index server/assets/index.html; \
	  else echo 'const char fd_asset_index[] = ""; const unsigned long fd_asset_index_len = 0;'; fi; } > $@.tmp && mv $@.tmp $@
$(BUILD)/gen/assets.o: $(BUILD)/gen/assets.c $(BUILD)/flags
	$(CC) $(CFLAGS_ALL) -c $< -o $@

# the server test binary links the daemon's code (not main.c) and starts the
# real flowd binary for end-to-end tests
$(BUILD)/test_server: $(TSERVER_OBJ) $(SERVER_LIB_OBJ) $(BUILD)/libflowcore.a $(BUILD)/flowd
	$(CC) $(LDFLAGS_ALL) -o $@ $(TSERVER_OBJ) $(SERVER_LIB_OBJ) $(BUILD)/libflowcore.a $(PKG_LIBS) $(TEST_LIBS) $(MPI_LIBS) -lm -lmvec

$(BUILD)/bench_core: $(BENCH_SRC:%.c=$(BUILD)/f32/%.o) $(BUILD)/libflowcore.a
	$(CC) $(LDFLAGS_ALL) -o $@ $(filter %.o,$^) $(BUILD)/libflowcore.a $(CORE_LIBS)

# W4's micro benchmark (bench/w4_micro/w4_micro.c; not part of make bench)
$(BUILD)/w4_micro: bench/w4_micro/w4_micro.c bench/w4_spec.h $(BUILD)/libflowcore.a $(BUILD)/flags
	$(CC) $(CFLAGS_ALL) $(LDFLAGS_ALL) -o $@ $< $(BUILD)/libflowcore.a $(CORE_LIBS)

# bench-mpi: data-parallel flowd train at 1 and 2 ranks on W2 and the
# allreduce of W2's 12M-float gradient (bench/mpi/scale.sh, docs/scale-out.md)
$(BUILD)/mpi_allreduce: bench/mpi/mpi_allreduce.c
	$(CC) $(CFLAGS_ALL) $(shell pkg-config --cflags ompi-c 2>/dev/null) -o $@ $< \
	  $(shell pkg-config --libs ompi-c 2>/dev/null || echo -lmpi)
bench-mpi: deps-check $(BUILD)/flowd $(BUILD)/mpi_allreduce
	BUILD=$(BUILD) sh bench/mpi/scale.sh
.PHONY: bench-mpi

# make run: a database under data/, a small demo model (trained in a few
# seconds on 2-D moons) if there is none, then the daemon in the foreground
FLOWD_LISTEN ?= 127.0.0.1:8080
run: deps-check all
	@mkdir -p data
	@$(BUILD)/flowd migrate --db data/flowd.db
	@if [ "$$(sqlite3 data/flowd.db "SELECT count(*) FROM models WHERE name = 'moons-demo'")" = 0 ]; then \
	  echo "training the demo model (2-D moons, a few seconds)..."; \
	  $(BUILD)/flowd train --quiet --config examples/moons-demo.json --out data/moons-demo.flow && \
	  $(BUILD)/flowd import data/moons-demo.flow --name moons-demo --db data/flowd.db; fi
	@echo
	@echo "flowd on http://$(FLOWD_LISTEN)   (Ctrl-C stops it)"
	@echo "  curl -s http://$(FLOWD_LISTEN)/v1/models"
	@echo "  curl -s http://$(FLOWD_LISTEN)/v1/models/moons-demo/log_prob -H 'Content-Type: application/json' -d '{\"inputs\":[[0.5,0.2],[3,3]]}'"
	@echo "  curl -s http://$(FLOWD_LISTEN)/v1/models/moons-demo/sample -H 'Content-Type: application/json' -d '{\"n\":5,\"seed\":1}'"
	@echo
	exec $(BUILD)/flowd serve --db data/flowd.db --listen $(FLOWD_LISTEN)

test: deps-check all
	@BUILD=$(BUILD) sh tests/run_all.sh

asan:
	$(MAKE) V=asan test

# bench: flowd (bench_core) and the PyTorch reference (bench/torch_ref.py,
# needs Debian's python3-torch), alternating per workload; bench-http: wrk
# against flowd serve.  Both write build/bench/results.json (bench/README.md).
bench: deps-check $(BUILD)/bench_core
	OPENBLAS_NUM_THREADS=$${OPENBLAS_NUM_THREADS:-2} BENCH_CORE=$(BUILD)/bench_core /usr/bin/python3 bench/compare.py

bench-http: deps-check $(BUILD)/bench_core $(BUILD)/flowd
	BUILD=$(BUILD) sh bench/http_bench.sh

# bench-daemon: training jobs through flowd serve against flowd train (needs
# dataset-fashion-mnist); writes "daemon" into build/bench/results.json
bench-daemon: deps-check $(BUILD)/flowd
	BUILD=$(BUILD) sh bench/daemon_bench.sh

DEB_PKGS := build-essential pkg-config libopenblas-dev libcjson-dev libsqlite3-dev \
            libmicrohttpd-dev libcurl4-openssl-dev zlib1g-dev libpng-dev libssl-dev sqlite3 \
            curl libyaml-dev \
            python3 python3-requests python3-numpy python3-pandas python3-jsonschema \
            python3-prometheus-client libopenmpi-dev openmpi-bin
# (the python3 packages: client/python/flowd_client.py and its test, and the
# contract and metrics tests of tests/python/, all run by make test; OpenMPI:
# data-parallel flowd train and its test, tests/mpi_train.sh)
deps:
	@missing=""; for p in $(DEB_PKGS); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	else echo "all build packages present"; fi
deps-check:
	@pkg-config --exists $(PKGS) yaml-0.1 || { echo "missing build packages: run 'make deps' (as root)"; $(MAKE) deps; }
.PHONY: deps-check

# ---- fuzzing: libFuzzer harnesses under fuzz/ (docs/reliability.md) -------
#   make fuzz          every harness for FUZZ_SECONDS (default 60) each
#   make fuzz-smoke    10 s each (CI)
# Core (and the request handlers, included by fuzz_request.c) compiled again
# with clang + ASan/UBSan + fuzzer coverage into build/fuzz/.
FUZZ_CC      ?= clang
FUZZ_SECONDS ?= 60
FUZZ_DIR     := build/fuzz
FUZZ_NAMES   := csv npy idx json_rows model flow_spec params job train_state request
FUZZ_SAN     := -fsanitize=address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer
FUZZ_CFLAGS  := -std=c11 -D_GNU_SOURCE -g -O1 -Wall -Wno-unused-parameter -fno-strict-aliasing \
                $(PKG_CFLAGS) $(FUZZ_SAN) -fsanitize=fuzzer-no-link
FUZZ_CORE    := $(CORE_SRC:%.c=$(FUZZ_DIR)/obj/%.o)
FUZZ_BINS    := $(FUZZ_NAMES:%=$(FUZZ_DIR)/fuzz_%)
$(FUZZ_DIR)/obj/%.o: %.c
	@mkdir -p $(@D)
	$(FUZZ_CC) $(FUZZ_CFLAGS) -MMD -MP -c $< -o $@
$(FUZZ_DIR)/fuzz_%: $(FUZZ_DIR)/obj/fuzz/fuzz_%.o $(FUZZ_CORE)
	$(FUZZ_CC) $(FUZZ_SAN) -fsanitize=fuzzer -o $@ $^ $(PKG_LIBS) -lm -lmvec -pthread
fuzz: deps-check $(FUZZ_BINS)
	sh fuzz/run.sh $(FUZZ_DIR) $(FUZZ_SECONDS) $(FUZZ_NAMES)
fuzz-smoke:
	$(MAKE) fuzz FUZZ_SECONDS=10
# rewrites the binary seeds of fuzz/corpus/ (valid inputs)
fuzz-seeds: $(FUZZ_DIR)/obj/fuzz/gen_seeds.o $(FUZZ_CORE)
	$(FUZZ_CC) $(FUZZ_SAN) -o $(FUZZ_DIR)/gen_seeds $^ $(PKG_LIBS) -lm -lmvec -pthread
	$(FUZZ_DIR)/gen_seeds
.PHONY: fuzz fuzz-smoke fuzz-seeds
.PRECIOUS: $(FUZZ_DIR)/obj/%.o

# ---- sanitizers and memory (docs/reliability.md) ---------------------------
#   make tsan       server tests (and the flowd they start) under ThreadSanitizer
#   make valgrind   core tests in-process under valgrind memcheck (FLOWD_TEST filters)
tsan: deps-check
	$(MAKE) V=tsan build/tsan/flowd build/tsan/flowctl build/tsan/test_server
	sh tests/tsan.sh build/tsan
valgrind: deps-check
	$(MAKE) V=rel build/rel/test_core
	sh tests/valgrind.sh build/rel/test_core
.PHONY: tsan valgrind

clean:
	rm -rf build

-include $(shell find build -name '*.d' 2>/dev/null)
