"""A real Kubernetes control plane on loopback, for kubestep's tests and demo.

etcd, kube-apiserver and kube-controller-manager are built from their Go
modules (see ``versions.env``) and run as local processes; a *process node*
registers a Node and runs each pod's containers as local processes.
"""
