# Placeholder, filled in by the control-plane work.
.PHONY: controlplane-binaries
controlplane-binaries:
	@true
