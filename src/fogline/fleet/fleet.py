"""``FleetConfig``: a loaded, validated fleet file, and each device's effective settings.

A ``FleetConfig`` is built only by the loader (``load_fleet`` / ``parse_fleet``), after every device's
settings have been merged and validated, so holding one means the whole file is good. It is frozen;
reloading a changed file gives a new object with a new ``revision``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from fogline.fleet.errors import FleetConfigError, Problem, did_you_mean
from fogline.fleet.model import CloudConfig, DeviceConfig, DeviceSettings


@dataclass(frozen=True)
class FleetConfig:
    """The whole fleet: the cloud, the model catalogue, groups and devices.

    ``revision`` is the first 12 hex digits of the SHA-256 of the file's bytes (the same as
    ``sha256sum FLEET.yaml | cut -c1-12``): agents report it, so an operator can see which devices run
    which version of the file. Environment values filled in at load time do not change it.
    """

    source: str
    revision: str
    version: int
    cloud: CloudConfig
    #: model name -> versions the catalogue lists (empty: any version)
    catalogue: Mapping[str, tuple[str, ...]]
    defaults: DeviceSettings
    #: group name -> the group's effective settings (defaults <- group)
    groups: Mapping[str, DeviceSettings] = field(default_factory=dict)
    devices: Mapping[str, DeviceConfig] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in ("catalogue", "groups", "devices"):
            object.__setattr__(self, name, MappingProxyType(dict(getattr(self, name))))

    def device_ids(self) -> list[str]:
        """Every device id, in the order the file lists them."""
        return list(self.devices)

    def group_names(self) -> list[str]:
        return list(self.groups)

    def devices_in(self, group: str) -> list[str]:
        """Ids of the devices that belong to ``group``."""
        return [device_id for device_id, device in self.devices.items() if device.group == group]

    def device(self, device_id: str) -> DeviceConfig:
        """The effective settings of ``device_id``; ``FleetConfigError`` (with a suggestion) if unknown."""
        found = self.devices.get(device_id)
        if found is not None:
            return found
        hint = did_you_mean(device_id, self.devices)
        if not hint:
            listed = ", ".join(list(self.devices)[:8]) + (", ..." if len(self.devices) > 8 else "")
            hint = f"; devices in this file: {listed}" if self.devices else "; this file lists no devices"
        raise FleetConfigError([Problem(self.source, 0, 0, ("devices",), f"no device {device_id!r}{hint}")])
