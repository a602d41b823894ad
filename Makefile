# Two commands set everything up on a fresh machine:
#   make demo   – install, start the local stack, run the whole loop for N simulated days
#   make test   – install, run the test suite on the real local stack
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: install demo test lint bench clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml infra/install.sh
	bash infra/install.sh $(VENV)
	touch $@

demo: install
	$(BIN)/streamrl demo

test: install
	$(BIN)/python -m pytest -q

lint: install
	$(BIN)/ruff check .

bench: install
	$(BIN)/python -m benchmarks

clean:
	rm -rf runs .streamrl .pytest_cache
