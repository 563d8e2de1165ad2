#!/usr/bin/env python3
"""Unit tests of the NetworkPolicy evaluator (netpol.py) on small hand-made
policies, so it cannot silently allow (or deny) everything.

usage: python3 -m unittest test_netpol  (from tests/py), or run this file."""
import os
import sys
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from netpol import Pod, World  # noqa: E402


def policy(name, selector, types, ingress=None, egress=None):
    spec = {"podSelector": selector, "policyTypes": types}
    if ingress is not None:
        spec["ingress"] = ingress
    if egress is not None:
        spec["egress"] = egress
    return ("app", {"kind": "NetworkPolicy", "metadata": {"name": name}, "spec": spec})


def world(*policies):
    pods = [
        Pod("a", "app", {"role": "a"}, "10.0.0.1", [("http", 80, "TCP")]),
        Pod("b", "app", {"role": "b"}, "10.0.0.2", [("http", 8080, "TCP"), ("metrics", 9090, "TCP")]),
        Pod("c", "other", {"role": "a"}, "10.0.1.3", [("http", 80, "TCP")]),
        Pod("net", None, {}, "192.0.2.7", [("https", 443, "TCP")]),
        Pod("net-excepted", None, {}, "192.0.2.200", [("https", 443, "TCP")]),
    ]
    return World({"app": {"team": "x"}, "other": {"team": "y"}}, pods, list(policies))


class Isolation(unittest.TestCase):
    def test_no_policy_allows_everything(self):
        w = world()
        self.assertTrue(w.allowed("a", "b", 8080))
        self.assertTrue(w.allowed("c", "b", 9090))

    def test_a_policy_with_no_rules_isolates_the_selected_pods_only(self):
        w = world(policy("deny-b", {"matchLabels": {"role": "b"}}, ["Ingress"], ingress=[]))
        self.assertFalse(w.allowed("a", "b", 8080))
        self.assertTrue(w.allowed("b", "a", 80))  # b's egress is not isolated
        self.assertTrue(w.allowed("b", "c", 80))  # c is in another namespace: no policy there

    def test_egress_isolation_is_its_own_direction(self):
        w = world(policy("no-egress-a", {"matchLabels": {"role": "a"}}, ["Egress"], egress=[]))
        self.assertFalse(w.allowed("a", "b", 8080))
        self.assertTrue(w.allowed("b", "a", 80))
        # A policy in namespace app does not isolate c in namespace other.
        self.assertTrue(w.allowed("c", "a", 80))

    def test_default_policy_types(self):
        # No policyTypes and no egress section: Ingress only.
        _, doc = policy("p", {}, [], ingress=[])
        del doc["spec"]["policyTypes"]
        w = world(("app", doc))
        self.assertFalse(w.allowed("a", "b", 8080))
        self.assertTrue(w.allowed("a", "net", 443))

    def test_a_connection_needs_both_ends(self):
        w = world(
            policy("a-out", {"matchLabels": {"role": "a"}}, ["Egress"], egress=[{"to": [{"podSelector": {"matchLabels": {"role": "b"}}}]}]),
            policy("b-in", {"matchLabels": {"role": "b"}}, ["Ingress"], ingress=[{"ports": [{"port": 9090}]}]),
        )
        self.assertTrue(w.allowed("a", "b", 9090))
        self.assertFalse(w.allowed("a", "b", 8080))  # egress allows, ingress does not
        self.assertFalse(w.allowed("a", "net", 443))  # ingress absent, egress denies


class Union(unittest.TestCase):
    def test_allowed_traffic_is_the_union_of_selecting_policies(self):
        w = world(
            policy("deny-all", {}, ["Ingress"], ingress=[]),
            policy("b-http", {"matchLabels": {"role": "b"}}, ["Ingress"], ingress=[{"ports": [{"port": 8080}]}]),
            policy("b-metrics", {"matchLabels": {"role": "b"}}, ["Ingress"], ingress=[{"ports": [{"port": 9090}]}]),
        )
        self.assertTrue(w.allowed("a", "b", 8080))
        self.assertTrue(w.allowed("a", "b", 9090))
        self.assertFalse(w.allowed("b", "a", 80))  # deny-all still isolates a

    def test_a_policy_for_the_other_direction_opens_nothing(self):
        w = world(
            policy("deny-all", {}, ["Ingress", "Egress"], ingress=[], egress=[]),
            policy("b-egress", {"matchLabels": {"role": "b"}}, ["Egress"], egress=[{}]),
        )
        self.assertFalse(w.allowed("b", "a", 80))  # a's ingress still denied
        self.assertTrue(w.allowed("b", "net", 443))


class Peers(unittest.TestCase):
    def test_pod_selector_alone_means_the_policys_namespace(self):
        w = world(policy("b-in", {"matchLabels": {"role": "b"}}, ["Ingress"],
                         ingress=[{"from": [{"podSelector": {"matchLabels": {"role": "a"}}}]}]))
        self.assertTrue(w.allowed("a", "b", 8080))
        self.assertFalse(w.allowed("c", "b", 8080))  # same labels, other namespace

    def test_namespace_and_pod_selector_in_one_peer_are_anded(self):
        peer = {"namespaceSelector": {"matchLabels": {"team": "y"}}, "podSelector": {"matchLabels": {"role": "a"}}}
        w = world(policy("b-in", {"matchLabels": {"role": "b"}}, ["Ingress"], ingress=[{"from": [peer]}]))
        self.assertTrue(w.allowed("c", "b", 8080))
        self.assertFalse(w.allowed("a", "b", 8080))

    def test_namespace_selector_by_metadata_name(self):
        peer = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "other"}}}
        w = world(policy("b-in", {"matchLabels": {"role": "b"}}, ["Ingress"], ingress=[{"from": [peer]}]))
        self.assertTrue(w.allowed("c", "b", 8080))
        self.assertFalse(w.allowed("a", "b", 8080))

    def test_ip_block_with_except(self):
        peer = {"ipBlock": {"cidr": "192.0.2.0/24", "except": ["192.0.2.128/25"]}}
        w = world(policy("a-out", {"matchLabels": {"role": "a"}}, ["Egress"], egress=[{"to": [peer]}]))
        self.assertTrue(w.allowed("a", "net", 443))
        self.assertFalse(w.allowed("a", "net-excepted", 443))
        self.assertFalse(w.allowed("a", "b", 8080))

    def test_match_expressions(self):
        selector = {"matchExpressions": [{"key": "role", "operator": "NotIn", "values": ["a"]}]}
        w = world(policy("deny-not-a", selector, ["Ingress"], ingress=[]))
        self.assertFalse(w.allowed("a", "b", 8080))
        self.assertTrue(w.allowed("b", "a", 80))


class Ports(unittest.TestCase):
    def test_named_port_resolves_against_the_destination(self):
        w = world(policy("b-in", {"matchLabels": {"role": "b"}}, ["Ingress"], ingress=[{"ports": [{"port": "metrics"}]}]))
        self.assertTrue(w.allowed("a", "b", 9090))
        self.assertFalse(w.allowed("a", "b", 8080))

    def test_named_egress_port_never_matches_outside_the_cluster(self):
        w = world(policy("a-out", {"matchLabels": {"role": "a"}}, ["Egress"], egress=[{"ports": [{"port": "https"}]}]))
        self.assertFalse(w.allowed("a", "net", 443))

    def test_protocol_and_port_ranges(self):
        w = world(policy("b-in", {"matchLabels": {"role": "b"}}, ["Ingress"],
                         ingress=[{"ports": [{"port": 9000, "endPort": 9100}, {"port": 8080, "protocol": "UDP"}]}]))
        self.assertTrue(w.allowed("a", "b", 9090))
        self.assertFalse(w.allowed("a", "b", 8080))  # only UDP 8080 is open


if __name__ == "__main__":
    unittest.main()
