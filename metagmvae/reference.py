"""Reading checkpoints written by the authors' code (../shared/reference-checkpoint-keys.txt)."""

REFERENCE_BUFFERS = ("log_norm_constant", "uniform_pi")  # constants we compute instead of storing


def convert_state_dict(state_dict, prefixes):
    """Rename an authors' state_dict by module prefix ({their prefix: ours}) and drop their buffers.

    An unknown name raises KeyError.
    """
    converted = {}
    for name, tensor in state_dict.items():
        if name in REFERENCE_BUFFERS:
            continue
        prefix = next((p for p in prefixes if name.startswith(p)), None)
        if prefix is None:
            raise KeyError(f"unexpected parameter {name!r} in a reference checkpoint")
        converted[prefixes[prefix] + name[len(prefix):]] = tensor
    return converted
