# Control plane for tests and the demo: etcd, kube-apiserver and
# kube-controller-manager built from source (pinned in controlplane/versions.env)
# and a process node. Included by the top Makefile, which defines PY and STAMP.

KUBECP := PYTHONPATH=controlplane $(PY) -m kubecp
CLUSTER_DIR ?= .kubestep/cluster
# Importable by the containers of `make cluster-up` (the examples' code).
CLUSTER_PYTHONPATH ?= examples/contacts

.PHONY: controlplane-binaries
controlplane-binaries: $(STAMP) ## Build etcd, kube-apiserver, kube-controller-manager (cached in ~/.cache/kubestep)
	@$(KUBECP) build

.PHONY: cluster-up
cluster-up: $(STAMP) controlplane-binaries ## Start a local cluster (control plane + process node) in the background
	@$(KUBECP) up --dir $(CLUSTER_DIR) $(addprefix --pythonpath ,$(CLUSTER_PYTHONPATH))

.PHONY: cluster-down
cluster-down: $(STAMP) ## Stop the local cluster started by cluster-up, leaving nothing behind
	@$(KUBECP) down --dir $(CLUSTER_DIR)

.PHONY: controlplane-measure
controlplane-measure: $(STAMP) controlplane-binaries ## Time a control-plane start until a pod has run; memory
	@$(KUBECP) measure
