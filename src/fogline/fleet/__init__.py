"""The fleet configuration: one YAML file describing the cloud tier and every edge device.

    from fogline.fleet import load_fleet
    fleet = load_fleet("deploy/fleet.example.yaml")   # raises FleetConfigError listing every problem
    device = fleet.device("cam-001")                  # effective settings: defaults <- group <- device
    device.routing.slo_ms, device.cloud.endpoint, fleet.revision

Modules: ``model`` (the typed settings), ``document`` (YAML with positions and ``${VAR}``
interpolation), ``layering`` (merging), ``validation`` (errors -> messages), ``loader`` (all of it
together), ``fleet`` (``FleetConfig``), ``schema`` (the JSON Schema), ``errors``.
"""

from fogline.fleet.errors import FleetConfigError, Problem
from fogline.fleet.fleet import FleetConfig
from fogline.fleet.loader import file_revision, load_fleet, parse_fleet
from fogline.fleet.model import (
    BatchingConfig,
    CloudConfig,
    CredentialsConfig,
    DeviceConfig,
    DeviceSettings,
    KeepaliveConfig,
    LoadConfig,
    LoggingConfig,
    MetricsConfig,
    ModelRef,
    RoutingConfig,
    ServingConfig,
    TlsConfig,
    split_host_port,
)

__all__ = [
    "BatchingConfig",
    "CloudConfig",
    "CredentialsConfig",
    "DeviceConfig",
    "DeviceSettings",
    "FleetConfig",
    "FleetConfigError",
    "KeepaliveConfig",
    "LoadConfig",
    "LoggingConfig",
    "MetricsConfig",
    "ModelRef",
    "Problem",
    "RoutingConfig",
    "ServingConfig",
    "TlsConfig",
    "file_revision",
    "load_fleet",
    "parse_fleet",
    "split_host_port",
]
