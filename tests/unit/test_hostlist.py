import pytest

from vllm_hpc.errors import ConfigError
from vllm_hpc.hostlist import parse_hostlist

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    "text, expected",
    [
        ("node1", ["node1"]),
        ("hopper[01-03,07]", ["hopper01", "hopper02", "hopper03", "hopper07"]),
        ("gpu-a[001-002],gpu-b7", ["gpu-a001", "gpu-a002", "gpu-b7"]),
        ("n[8-11]", ["n8", "n9", "n10", "n11"]),
        ("n[08-11]", ["n08", "n09", "n10", "n11"]),
        ("rack[1-2]-gpu[1-2]", ["rack1-gpu1", "rack1-gpu2", "rack2-gpu1", "rack2-gpu2"]),
        ("a[1,3],b[2-3],c", ["a1", "a3", "b2", "b3", "c"]),
        ("x[1-2],x1", ["x1", "x2"]),
        ("  gpu[01-02]  ", ["gpu01", "gpu02"]),
        ("node-1.cluster", ["node-1.cluster"]),
    ],
)
def test_parse_hostlist_forms(text, expected):
    assert parse_hostlist(text) == expected


@pytest.mark.parametrize("text", ["", "gpu[01-03", "gpu]1[", "gpu[a-b]", "gpu[3-1]", "a,,b", "gpu[[1]]", "gpu[]"])
def test_parse_hostlist_rejects_bad_lists(text):
    with pytest.raises(ConfigError) as err:
        parse_hostlist(text)
    assert "node list" in err.value.problem
