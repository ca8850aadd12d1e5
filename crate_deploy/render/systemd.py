"""The systemd renderer: one .service unit per planned service, and a .target grouping them.

Reads only the process plan (and the site's systemd section for what only systemd has:
scope and hardening), so the units say exactly what a foreground launch runs.
"""

from __future__ import annotations

from typing import Any

from crate_deploy.plan import names
from crate_deploy.plan.services import Plan, Service
from crate_deploy.render.base import RenderedFile, Renderer


class SystemdRenderer(Renderer):
    """Units under systemd/ in the output directory."""

    def files(self, plan: Plan) -> list[RenderedFile]:
        target = names.target_unit(self.site)
        units = [self._unit(service, target) for service in plan.services]
        units.append(self.file(f"{names.UNIT_DIR}/{target}", "systemd/target.j2",
                               description=f"{self.site.project} Celery fleet",
                               services=[service.unit for service in plan.services]))
        return units

    def _unit(self, service: Service, target: str) -> RenderedFile:
        return self.file(f"{names.UNIT_DIR}/{service.unit}", "systemd/service.j2",
                         service=service, target=target, **self._state_paths(service))

    def _state_paths(self, service: Service) -> dict[str, Any]:
        """StateDirectory= where systemd can make the state directory itself (the default
        /var/lib/PROJECT of a system unit), else ReadWritePaths= through ProtectSystem."""
        default = f"/var/lib/{self.site.project}"
        if self.site.systemd.scope == "system" and service.state_dir == default:
            return {"state_directory": self.site.project, "read_write_paths": []}
        return {"state_directory": None, "read_write_paths": [service.state_dir]}
