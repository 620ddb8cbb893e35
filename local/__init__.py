"""The local control plane: a real etcd + kube-apiserver + kube-controller-manager +
kube-scheduler + kwok, built from the Go module proxy (pins in ``controlplane/``), with a
simulated fleet of Neuron nodes. Used by ``neuronplace local``, ``neuronplace demo`` and the
test suite's fixtures.
"""
