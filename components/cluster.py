"""Offline validation of the Ray cluster launcher config (``ray_cluster.yaml``).

``ray up`` checks a cluster YAML in ``ray.autoscaler._private.commands._bootstrap_config``:

1. ``ray.autoscaler._private.util.prepare_config``: merges the provider's defaults
   (``ray/autoscaler/aws/defaults.yaml``, read from the wheel), merges ``setup_commands``
   into the head/worker lists, checks the docker section and fills per-node-type
   ``min_workers`` / ``max_workers``;
2. ``provider.fillout_available_node_types_resources``: asks the cloud (EC2
   DescribeInstanceTypes) for CPUs/GPUs of node types without ``resources``;
3. ``ray.autoscaler._private.util.validate_config``: JSON-schema validation against
   ``ray/autoscaler/ray-schema.json`` (unknown keys are rejected at the top level and inside
   every node type) plus cross-field checks (``head_node_type`` must be a node type,
   ``sum(min_workers) <= max_workers``, ...);
4. ``provider.bootstrap_config``: creates key pairs, IAM roles, security groups (cloud).

Steps 2 and 4 need cloud credentials; this module runs steps 1 and 3 only, which are pure
and offline. Our config gives every node type explicit ``resources``, so skipping step 2
loses nothing. What is NOT checked: the contents of ``node_config`` (EC2 arguments such as
``InstanceType`` or ``ImageId``; AWS checks them at launch), that file-mount sources exist,
and that the commands work.

Both functions are private Ray API (``ray.autoscaler._private``): this is one reason the
project pins ``ray==2.60.0``. If Ray moves them, the import below fails loudly.

CLI: ``python -m components.cluster ray_cluster.yaml`` prints ``OK: ...`` (exit 0) or the
error as one line (exit 2).
"""

from __future__ import annotations

import copy
import sys
from pathlib import Path
from typing import Any

import yaml

from components.errors import InputError


def _ray_launcher_functions():
    """Import Ray's private launcher helpers (pinned Ray version; see module docstring)."""
    from ray.autoscaler._private.util import prepare_config, validate_config

    return prepare_config, validate_config


def _where(error) -> str:
    """JSON path of a jsonschema error, e.g. ``available_node_types.ray.worker.gpu``."""
    parts = [str(p) for p in error.absolute_path]
    return ".".join(parts) if parts else "<top level>"


def validate_cluster_config(path: str | Path) -> dict[str, Any]:
    """Load a Ray cluster launcher YAML and validate it the way ``ray up`` does, offline.

    Runs Ray's own ``prepare_config`` (defaults merged in) and then ``validate_config``
    (schema + cross-field checks); no cloud provider is contacted.

    Returns:
        The prepared config (defaults filled in), as ``ray up`` would go on to use it.

    Raises:
        InputError: the file is missing or is not YAML, or Ray rejects the config; the
            message names the file and carries Ray's (jsonschema's) message.
    """
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as e:
        raise InputError(f"{path}: cannot read Ray cluster config: {e.strerror or e}") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as e:
        msg = " ".join(str(e).split())
        raise InputError(f"{path}: not valid YAML: {msg}") from None
    if not isinstance(raw, dict):
        raise InputError(f"{path}: a Ray cluster config must be a YAML mapping")
    provider = raw.get("provider")
    if not isinstance(provider, dict) or "type" not in provider:
        raise InputError(f"{path}: missing 'provider' with a 'type' (e.g. provider: {{type: aws}})")

    import jsonschema  # installed with ray[default]; Ray's validate_config uses it

    prepare_config, validate_config = _ray_launcher_functions()
    try:
        prepared = prepare_config(copy.deepcopy(raw))
    except NotImplementedError as e:  # unknown provider type
        raise InputError(f"{path}: {e}") from None
    except (KeyError, ValueError, TypeError, AssertionError) as e:
        detail = f"missing key {e}" if isinstance(e, KeyError) else str(e)
        raise InputError(f"{path}: invalid Ray cluster config: {detail}") from None
    try:
        validate_config(prepared)
    except jsonschema.ValidationError as e:
        raise InputError(
            f"{path}: invalid Ray cluster config at {_where(e)}: {e.message}"
        ) from None
    except (ValueError, RuntimeError) as e:
        raise InputError(f"{path}: invalid Ray cluster config: {e}") from None
    return prepared


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1 or args[0] in ("-h", "--help"):
        print("usage: python -m components.cluster RAY_CLUSTER_YAML", file=sys.stderr)
        return 2
    try:
        config = validate_cluster_config(args[0])
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    node_types = ", ".join(sorted(config.get("available_node_types", {})))
    print(
        f"OK: {args[0]} (cluster {config['cluster_name']!r}, provider "
        f"{config['provider']['type']}, node types: {node_types}, "
        f"max_workers {config['max_workers']})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
