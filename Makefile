# clap-data: `make demo` and `make test` are the only two commands a new machine needs.
# Both create .venv with Python 3.12 and install the pinned stack from pyproject.toml.

SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
SHARED_FIXTURE := ../shared/fixtures/astribot_s1_dummy
DEMO_DIR := demo-output
DEMO_NTP_STEPS := 100

# The first Python 3.12 found: on PATH, then pyenv's, then the usual prefixes.
PYTHON312 ?= $(shell for c in python3.12 $$HOME/.pyenv/versions/3.12*/bin/python3.12 /usr/local/bin/python3.12 /usr/bin/python3.12; do \
	if $$c -c 'import sys; assert sys.version_info[:2] == (3, 12)' >/dev/null 2>&1; then echo $$c; break; fi; done)

.PHONY: demo test venv bench clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	@test -n "$(PYTHON312)" || { echo "clap-data needs Python 3.12; none was found on PATH or under ~/.pyenv." >&2; exit 1; }
	@test -x $(PY) || $(PYTHON312) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade "pip>=24"
	$(PY) -m pip install --quiet -e ".[test]"
	@touch $(STAMP)

# Ingest the bundled real Astribot S1 sample (or, in a clone without ../shared, a generated one).
# Exit status 3 means "finished with quarantined episodes": the real sample is built that way.
# It is verified against its manifest (every frame decoded). Then a short Act-VAE run on it (small
# preset; ~2 min on 2 cores): train, tokenize, evaluate on
# the held-out end of the episode, decode one frame's tokens back to an executable chunk. Last, a short
# VD-VAE run with a tiny random backbone (said so on screen): train, pseudo-label, verify. Then the token
# statistics and the HTML report of what it built. Last, CLAP-NTP with a tiny random VLM (said so on screen):
# export training shards (the tail of every episode held out), a few training steps, and one prediction on a
# held-out sample printed as a chunk beside its ground truth.
demo: $(STAMP)
	@mkdir -p $(DEMO_DIR)
	@if [ -d $(SHARED_FIXTURE) ]; then src=$(SHARED_FIXTURE); \
	else src=$(DEMO_DIR)/astribot_source; echo "No ../shared here: generating a small Astribot-format sample in $$src"; \
		$(PY) -m clap_data.factories.astribot $$src --lengths 236,180; fi; \
	$(VENV)/bin/clap-data ingest astribot --src $$src --out $(DEMO_DIR)/astribot_v3 --overwrite; rc=$$?; \
	if [ $$rc -ne 0 ] && [ $$rc -ne 3 ]; then exit $$rc; fi; \
	$(VENV)/bin/clap-data info $(DEMO_DIR)/astribot_v3 && \
	$(VENV)/bin/clap-data verify $(DEMO_DIR)/astribot_v3 --full && \
	$(VENV)/bin/clap-data train act-vae --data $(DEMO_DIR)/astribot_v3 --out $(DEMO_DIR)/act_vae --steps 300 --holdout tail --holdout-fraction 0.2 && \
	$(VENV)/bin/clap-data tokenize act-vae $(DEMO_DIR)/astribot_v3 --ckpt $(DEMO_DIR)/act_vae && \
	$(VENV)/bin/clap-data eval act-vae $(DEMO_DIR)/astribot_v3 --ckpt $(DEMO_DIR)/act_vae && \
	$(VENV)/bin/clap-data detokenize $(DEMO_DIR)/astribot_v3 --ckpt $(DEMO_DIR)/act_vae --episode 0 --frame 100 && \
	echo "VD-VAE step: a tiny RANDOM DINOv2 built from a config stands in for the real backbone (nothing is downloaded);" && \
	echo "it shows the pipeline (train, pseudo-label, verify), not pseudo-label quality." && \
	$(PY) -m clap_data.factories.tiny_backbone $(DEMO_DIR)/tiny_backbone && \
	$(VENV)/bin/clap-data train vd-vae --robot $(DEMO_DIR)/astribot_v3 --act-vae $(DEMO_DIR)/act_vae \
		--backbone $(DEMO_DIR)/tiny_backbone --camera wrist_left --out $(DEMO_DIR)/vd_vae --steps 10 --batch-size 8 \
		--holdout tail --holdout-fraction 0.2 --overwrite && \
	$(VENV)/bin/clap-data pseudolabel vd-vae $(DEMO_DIR)/astribot_v3 --ckpt $(DEMO_DIR)/vd_vae \
		--backbone $(DEMO_DIR)/tiny_backbone --camera wrist_left && \
	$(VENV)/bin/clap-data verify $(DEMO_DIR)/astribot_v3 && \
	$(VENV)/bin/clap-data stats $(DEMO_DIR)/astribot_v3 && \
	$(VENV)/bin/clap-data report $(DEMO_DIR)/astribot_v3 --act-vae $(DEMO_DIR)/act_vae --out $(DEMO_DIR)/report.html && \
	echo "The report: $(abspath $(DEMO_DIR))/report.html (one self-contained HTML file; open it in any browser)" && \
	echo "CLAP-NTP step: a tiny RANDOM Qwen2.5-VL (2 layers of width 64) built from a config stands in for a real VLM" && \
	echo "(nothing is downloaded); it shows the pipeline (export, train ntp, predict ntp), not a useful policy." && \
	$(VENV)/bin/clap-data export --data $(DEMO_DIR)/astribot_v3 --out $(DEMO_DIR)/shards --image-size 112x112 \
		--stride 4 --holdout tail --holdout-fraction 0.2 --overwrite && \
	$(PY) -m clap_data.factories.tiny_vlm $(DEMO_DIR)/tiny_vlm && \
	$(VENV)/bin/clap-data train ntp --shards $(DEMO_DIR)/shards --model $(DEMO_DIR)/tiny_vlm --out $(DEMO_DIR)/ntp \
		--steps $(DEMO_NTP_STEPS) --batch-size 8 --lr 5e-3 --warmup-steps 5 --log-every 20 --device cpu --overwrite && \
	$(VENV)/bin/clap-data predict ntp --ckpt $(DEMO_DIR)/ntp --shards $(DEMO_DIR)/shards --device cpu

test: $(STAMP)
	$(VENV)/bin/ruff check .
	HF_HUB_OFFLINE=1 $(PY) -m pytest

bench: $(STAMP)
	$(PY) bench/ingest.py
	$(PY) bench/ingest_sources.py
	$(PY) bench/tokenize_act_vae.py --frames 20000 --episodes 40

clean:
	rm -rf $(VENV) $(DEMO_DIR) bench/out
