import pytest

from vllm_hpc.errors import NetworkError
from vllm_hpc.network import Interface, choose_interface, parse_default_route

pytestmark = pytest.mark.unit

LO = Interface("lo", "127.0.0.1", True, True)
ETH = Interface("eth0", "10.0.0.5", True, False)
IB = Interface("ib0", "10.10.0.5", True, False)
HSN = Interface("hsn0", "10.20.0.5", True, False)
DOWN_IB = Interface("ib1", "10.11.0.5", False, False)


def test_infiniband_first():
    assert choose_interface([LO, ETH, HSN, IB], None, "eth0").interface == "ib0"


def test_high_speed_network_before_default_route():
    choice = choose_interface([LO, ETH, HSN], None, "eth0")
    assert (choice.interface, choice.ip) == ("hsn0", "10.20.0.5")


def test_default_route_when_no_fabric():
    other = Interface("enp1s0", "192.168.1.2", True, False)
    assert choose_interface([LO, other, ETH], None, "eth0").interface == "eth0"


def test_down_interfaces_and_loopback_are_skipped():
    assert choose_interface([LO, DOWN_IB, ETH], None, None).interface == "eth0"
    with pytest.raises(NetworkError, match="no usable network interface"):
        choose_interface([LO, DOWN_IB], None, None)


def test_loopback_only_if_asked_by_name():
    assert choose_interface([LO, ETH], "lo", None).ip == "127.0.0.1"


def test_requested_interface_must_exist_and_have_an_address():
    with pytest.raises(NetworkError, match="'ib9' does not exist"):
        choose_interface([LO, ETH], "ib9", None)
    with pytest.raises(NetworkError, match="no IPv4"):
        choose_interface([Interface("ib0", None, True, False)], "ib0", None)


def test_parse_default_route():
    text = (
        "Iface\tDestination\tGateway\tFlags\n"
        "eth1\t000010AC\t00000000\t0001\n"
        "eth0\t00000000\t010200C0\t0003\n"
    )
    assert parse_default_route(text) == "eth0"
    assert parse_default_route("Iface\tDestination\n") is None
