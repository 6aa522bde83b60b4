"""The process node: a Kubernetes node whose containers are local processes.

It registers a Ready Node, binds pending pods to itself (there is no
scheduler), runs their containers as processes of the project's Python
environment, reports their status as the kubelet does, and serves their logs
over the kubelet's HTTPS API. Run it with ``python -m kubecp.node``.
"""
