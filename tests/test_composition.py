"""The router's composition root: one answering pipeline, typed worker messages.

`build_answering` is what serve, reload, every DNS worker and the fuzz target use; the
worker IPC is frozen dataclasses, each side accepting only its own direction's messages.
"""

from __future__ import annotations

import pickle
import random
from dataclasses import replace

import dns.edns
import dns.message
import dns.rcode
import pytest

from georouter.armour import random_secrets
from georouter.config import DEFAULT_CONFIG, load_config
from georouter.fleet import Fleet
from georouter.geo import open_geoip
from georouter.pipeline import build_answering
from georouter.selector import EMPTY_SNAPSHOT, Selector
from georouter.tallies import HotPathTallies
from georouter.worker_messages import (
    Configure,
    FleetUpdate,
    TallyReport,
    frame,
    to_main,
    to_worker,
)
from georouter.workers import _Worker


def test_the_pipeline_places_picks_and_counts_into_the_tallies_given() -> None:
    config = load_config(DEFAULT_CONFIG)
    selector = Selector(config.policy, config.regions, random.Random(0), config.services)
    Fleet(config, selector.update)  # publishes the configured nodes to the selector
    tallies = HotPathTallies()
    with open_geoip(None) as geodb:
        responder = build_answering(config, geodb, tallies, selector)
        ecs = dns.edns.ECSOption("81.2.69.0", 24)  # a European network
        query = dns.message.make_query("cdn.example.com.", "A", use_edns=0, options=[ecs])
        data = responder.respond(query.to_wire(), "127.0.0.1", "udp")
    assert data is not None
    answer = dns.message.from_wire(data)
    assert answer.rcode() == dns.rcode.NOERROR and answer.answer
    assert tallies.geoip_lookups == 1  # the placer counts where the responder does
    assert sum(tallies.queries.values()) == 1 and sum(tallies.decisions.values()) == 1
    assert {region for region, _ in tallies.answers} == {"eu"}


def test_messages_round_trip_each_in_its_own_direction() -> None:
    config = load_config(DEFAULT_CONFIG)
    for message in (Configure(config, "embedded"), FleetUpdate(EMPTY_SNAPSHOT)):
        sent = frame(message)
        assert int.from_bytes(sent[:4]) == len(sent) - 4
        assert to_worker(sent[4:]) == message
        with pytest.raises(TypeError):
            to_main(sent[4:])
    with pytest.raises(TypeError):
        to_worker(frame(TallyReport(HotPathTallies()))[4:])
    with pytest.raises(TypeError):  # the old tagged tuples are no message
        to_worker(pickle.dumps(("snapshot", EMPTY_SNAPSHOT)))


def test_a_worker_keeps_its_pipeline_when_a_configure_comes_without_its_database() -> None:
    # A worker gets its config from main, which fills in the cookie secret of this start.
    config = replace(load_config(DEFAULT_CONFIG), cookies=random_secrets())
    with open_geoip(None) as geodb:
        worker = _Worker(config, geodb, 1)
        before = worker.responder
        worker.apply(Configure(config, "gone.mmdb"), geoip=None)
        assert worker.responder is before
        worker.apply(Configure(config, "embedded"), geoip=geodb)
        assert worker.responder is not before
