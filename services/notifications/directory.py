"""Staff contacts and each department's supervisors and heads (config/notifications.yaml).

Staff are named as their sign-in token names them (agent id, else username), so the
in-app inbox of `GET /v1/inbox` and the owner on a case line up without a lookup.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import BaseModel, ConfigDict, EmailStr, Field, ValidationError

from services.access.users import USERNAME_PATTERN

DEFAULT_FILE = Path(__file__).resolve().parents[2] / "config" / "notifications.yaml"

Language = Literal["zh", "en"]
StaffId = Annotated[str, Field(pattern=USERNAME_PATTERN)]
# The channels a staff notification can take; `inbox` needs no address.
StaffChannel = Literal["inbox", "email", "im", "sms"]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class StaffContact(Strict):
    email: EmailStr | None = None
    im: Annotated[str, Field(min_length=1, max_length=200, pattern=r"^\S+$")] | None = None
    sms: Annotated[str, Field(pattern=r"^\+?[0-9]{5,20}$")] | None = None
    language: Language | None = None


class Ladder(Strict):
    """Who is told as a department's supervisor, and as its head."""

    supervisors: tuple[StaffId, ...] = ()
    heads: tuple[StaffId, ...] = ()


class StaffDirectory(Strict):
    default_language: Language = "zh"
    staff: dict[StaffId, StaffContact] = {}
    departments: dict[str, Ladder] = {}
    default: Ladder = Ladder()

    def supervisors(self, department: str | None) -> tuple[str, ...]:
        return self._ladder(department).supervisors

    def heads(self, department: str | None) -> tuple[str, ...]:
        return self._ladder(department).heads

    def _ladder(self, department: str | None) -> Ladder:
        found = self.departments.get(department) if department else None
        # A department listed without anyone at a level falls back to the default's.
        if found is None:
            return self.default
        return Ladder(
            supervisors=found.supervisors or self.default.supervisors,
            heads=found.heads or self.default.heads,
        )

    def language_of(self, recipient: str) -> Language:
        contact = self.staff.get(recipient)
        return (contact.language if contact else None) or self.default_language

    def address(self, recipient: str, channel: str) -> str | None:
        """Where `channel` reaches this staff member (None: it does not)."""
        contact = self.staff.get(recipient)
        if contact is None or channel not in ("email", "im", "sms"):
            return None
        value: str | None = getattr(contact, channel)
        return value


def load_directory(path: Path | None = None) -> StaffDirectory:
    """The directory from `path` (default config/notifications.yaml); a bad file raises
    ValueError naming the file and what is wrong, so the service refuses to start."""
    chosen = path or DEFAULT_FILE
    try:
        with open(chosen, encoding="utf-8") as handle:
            raw = yaml.safe_load(handle)
        return StaffDirectory.model_validate(raw or {})
    except ValidationError as error:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}"
            for e in error.errors(include_url=False, include_input=False)
        )
        raise ValueError(f"{chosen}: {problems}") from None
    except (OSError, yaml.YAMLError) as error:
        raise ValueError(f"{chosen}: {error}") from error
