"""One ``APIRouter`` per resource; :data:`ROUTERS` is the order they are mounted in."""

from __future__ import annotations

from fastapi import APIRouter

from . import (
    audit,
    collections,
    console,
    detect,
    edge,
    evaluation,
    faces,
    group,
    keys,
    persons,
    search,
    system,
    verify,
)

ROUTERS: tuple[APIRouter, ...] = (
    system.router,
    detect.router,
    verify.router,
    search.router,
    group.router,
    collections.router,
    persons.router,
    faces.router,
    audit.router,
    edge.router,
    evaluation.router,
    keys.router,
    console.router,
)
