"""What the Neuron DRA driver publishes, named once for the operator and the simulated driver.

The driver (Neuron 2.28 and later) publishes one ``resource.k8s.io/v1`` device per chip (no per-core
devices) in ResourceSlices of its own driver name, and a DeviceClass that selects them. Attribute
names without a domain are in the driver's domain (a ResourceSlice may write ``deviceId``; a CEL
selector or a ``matchAttribute`` constraint must write ``neuron.aws.com/deviceId``). The EFA device
groups live in a domain of their own.
"""

from __future__ import annotations

# The driver's name (ResourceSlice ``spec.driver``) and the DeviceClass it installs.
DRIVER = "neuron.aws.com"
DEVICE_CLASS = "neuron.aws.com"

# Devices are ``neurondevice0`` … ``neurondevice<chips-1>``; the number is the chip's id on the node.
DEVICE_PREFIX = "neurondevice"

# Attributes of every device (unqualified, in the driver's domain).
DEVICE_ID = "deviceId"
INSTANCE_TYPE = "instanceType"
NEURON_DRIVER_VERSION = "neuronDriverVersion"
DRA_DRIVER_VERSION = "draDriverVersion"
RESOURCE_TYPE = "resourceType"
RESOURCE_TYPE_DEVICE = "neuron_device"
NETWORK_NODE_LAYERS = ("networkNodeLayer1", "networkNodeLayer2", "networkNodeLayer3")

# Non-UltraServer Trainium only: the chip's place in the torus and the connected groups of 4 and 8
# chips it belongs to (a constraint ``matchAttribute`` on a group id keeps a request's chips connected).
TOPOLOGY_X = "topology_x"
TOPOLOGY_Y = "topology_y"
TOPOLOGY_GROUP_ATTRIBUTES = {4: "topology4_id", 8: "topology8_id"}

# With EFA: connected groups of 1, 4, 8 and 16 chips, in a domain of their own (already qualified).
DEVICE_GROUP_ATTRIBUTES = {size: f"resource.aws.com/devicegroup{size}_id" for size in (1, 4, 8, 16)}

# The opaque per-claim configuration: the logical NeuronCore size (1 or 2; trn2 and later only).
CONFIG_KIND = "NeuronConfig"
CONFIG_LNC_FIELD = "logicalNeuronCore"


def qualified(attribute: str) -> str:
    """The attribute's name as CEL and ``matchAttribute`` write it (``neuron.aws.com/topology4_id``)."""
    return attribute if "/" in attribute else f"{DRIVER}/{attribute}"


def device_name(chip: int) -> str:
    return f"{DEVICE_PREFIX}{chip}"


def chip_of_device(name: str) -> int | None:
    """The chip id a device name stands for, or None for a name that is not one of the driver's."""
    suffix = name[len(DEVICE_PREFIX) :] if name.startswith(DEVICE_PREFIX) else ""
    return int(suffix) if suffix.isdigit() and (suffix == "0" or not suffix.startswith("0")) else None
