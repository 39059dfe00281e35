# Thin aliases for the scripts, which are what the README and CI call.
.PHONY: serve test check

serve:
	scripts/serve

test:
	scripts/test

check:
	scripts/check
