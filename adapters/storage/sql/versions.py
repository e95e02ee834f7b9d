"""The Versions port on SQL: journey definitions by version, and the versions in force, numbered by
deployment so that two processes cannot both apply a workspace over the same one."""

from __future__ import annotations

from collections import Counter
from collections.abc import Collection, Mapping

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError

from journey_engine.ports import DeploymentRace

from .store import SqlProfiles
from .tables import facts_t, in_force_t, versions_t

_DEPLOYMENT = "deployment"  # the store_facts row numbering deployments


class SqlVersions(SqlProfiles):
    def stored_versions(self) -> dict[tuple[str, str], str]:
        with self._reading() as conn:
            rows = conn.execute(sa.select(versions_t.c.journey, versions_t.c.version, versions_t.c.definition))
            return {(j, v): d for j, v, d in rows}

    def in_force(self) -> tuple[int, dict[str, str]]:
        with self._reading() as conn:
            number = conn.execute(sa.select(facts_t.c.value).where(facts_t.c.name == _DEPLOYMENT)).scalar()
            rows = conn.execute(sa.select(in_force_t.c.journey, in_force_t.c.version))
            return int(number or 0), {j: v for j, v in rows}

    def deploy(self, definitions: Mapping[tuple[str, str], str], in_force: Mapping[str, str], *,
               after: int) -> int:
        wall = self.wall()
        try:
            with self._tx() as conn:
                query = sa.select(facts_t.c.value).where(facts_t.c.name == _DEPLOYMENT)
                if self.dialect == "postgresql":
                    query = query.with_for_update()  # deployments of one database go one at a time
                number = int(conn.execute(query).scalar() or 0)
                if number != after:
                    raise DeploymentRace(after, number)
                known = {(j, v) for j, v in conn.execute(sa.select(versions_t.c.journey, versions_t.c.version))}
                fresh = [{"journey": j, "version": v, "definition": d, "stored_at": wall}
                         for (j, v), d in sorted(definitions.items()) if (j, v) not in known]
                if fresh:
                    conn.execute(versions_t.insert(), fresh)
                conn.execute(sa.delete(in_force_t))
                if in_force:
                    conn.execute(in_force_t.insert(), [{"journey": j, "version": v, "deployment": number + 1}
                                                       for j, v in sorted(in_force.items())])
                row = {"name": _DEPLOYMENT, "value": str(number + 1), "at": wall}
                if number == 0:
                    conn.execute(facts_t.insert(), [row])  # two first deployments: one fails on the key
                else:
                    conn.execute(sa.update(facts_t).where(facts_t.c.name == _DEPLOYMENT)
                                 .values(value=row["value"], at=wall))
        except IntegrityError as exc:
            raise DeploymentRace(after, after + 1) from exc
        return number + 1

    def live_instances(self) -> dict[tuple[str, str, str], int]:
        found: Counter[tuple[str, str, str]] = Counter()
        for profile in self.all_profiles():
            for inst in profile.instances.values():
                found[(inst.journey, inst.version, inst.state)] += 1
        return dict(found)

    def users_in(self, journeys: Collection[str]) -> list[str]:
        wanted = set(journeys)
        return [p.user_id for p in self.all_profiles()
                if any(inst.journey in wanted for inst in p.instances.values())]
