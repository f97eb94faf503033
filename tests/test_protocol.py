"""The wire protocol codec: the byte layouts of docs/protocol.md, pinned."""

from __future__ import annotations

import io

import pytest

from durus import protocol
from durus.error import DurusKeyError, ProtocolError, ReadConflictError
from durus.record import int4, int_to_oid, pack_record

OID1 = int_to_oid(1)
OID2 = int_to_oid(2)


def reader(data: bytes):
    stream = io.BytesIO(data)

    def read(size: int) -> bytes:
        chunk = stream.read(size)
        if len(chunk) != size:
            raise ConnectionResetError("short")
        return chunk

    return read


def test_request_bytes_match_durus_43():
    assert protocol.version_request() == b"V\x00\x00\x00\x01"
    assert protocol.new_oids_request(32) == b"M\x20"
    assert protocol.load_request(OID1) == b"L" + b"\0" * 7 + b"\1"
    assert protocol.bulk_load_request([OID1, OID2]) == b"B" + int4(2) + OID1 + OID2
    assert (protocol.COMMIT, protocol.SYNC, protocol.PACK, protocol.QUIT, protocol.CLOSE) == (
        b"C", b"S", b"P", b"Q", b".")
    assert (protocol.STATUS_OKAY, protocol.STATUS_KEYERROR, protocol.STATUS_INVALID) == (b"O", b"K", b"I")


def test_new_oids_request_bounds():
    with pytest.raises(ValueError):
        protocol.new_oids_request(0)
    with pytest.raises(ValueError):
        protocol.new_oids_request(256)


@pytest.mark.parametrize(
    "data, command, argument",
    [
        (b"V" + int4(1), b"V", 1),
        (b"N", b"N", None),
        (b"M\x05", b"M", 5),
        (b"L" + OID1, b"L", OID1),
        (b"B" + int4(2) + OID1 + OID2, b"B", OID1 + OID2),
        (b"C", b"C", None),
        (b"S", b"S", None),
        (b"P", b"P", None),
        (b"Q", b"Q", None),
        (b".", b".", None),
        (b"A" + b"n" * 32, b"A", b"n" * 32),
    ],
)
def test_parse_every_request(data, command, argument):
    request, end = protocol.parse_request(bytearray(b"xx" + data + b"L"), 2, 100)
    assert (request.command, request.argument, end) == (command, argument, 2 + len(data))


def test_parse_waits_for_a_whole_request():
    whole = b"B" + int4(2) + OID1 + OID2
    for cut in range(len(whole)):
        assert protocol.parse_request(bytearray(whole[:cut]), 0, 100) is None
    assert protocol.parse_request(bytearray(whole), 0, 100) is not None


def test_parse_refuses_unknown_commands_and_huge_bulk_loads():
    with pytest.raises(ProtocolError, match="unknown command"):
        protocol.parse_request(bytearray(b"Z"), 0, 100)
    # Refused from the count alone, without waiting for the oids.
    with pytest.raises(ProtocolError, match="bulk load"):
        protocol.parse_request(bytearray(b"B" + int4(101)), 0, 100)


def test_frames():
    assert protocol.parse_frame(bytearray(int4(3) + b"abcX"), 0, 10) == (b"abc", 7)
    assert protocol.parse_frame(bytearray(int4(3) + b"ab"), 0, 10) is None
    assert protocol.parse_frame(bytearray(b"\0\0"), 0, 10) is None
    with pytest.raises(ProtocolError, match="exceeds the limit"):
        protocol.parse_frame(bytearray(int4(11)), 0, 10)


def test_commit_data_round_trip():
    records = {OID1: pack_record(OID1, b"data1", OID2), OID2: pack_record(OID2, b"d2", b"")}
    frame = protocol.commit_data(records.items())
    tdata = frame[4:]
    assert frame[:4] == int4(len(tdata))
    # Each entry: int4(8 + len(record)) + oid + record.
    assert tdata[:4] == int4(8 + len(records[OID1])) and tdata[4:12] == OID1
    assert protocol.split_commit_data(tdata) == records
    assert protocol.commit_data([]) == int4(0)


@pytest.mark.parametrize(
    "tdata, problem",
    [
        (b"\0\0", "length"),
        (int4(100) + OID1, "impossible length"),
        (int4(8 + 12 + 1) + OID1 + pack_record(OID2, b"x", b""), "another oid"),
        (int4(8 + 12 + 3) + OID1 + OID1 + int4(1) + b"xyz", "inconsistent"),
        (int4(8 + 12 + 1) + OID1 + OID1 + int4(5) + b"x", "inconsistent"),
        ((int4(8 + 13) + OID1 + pack_record(OID1, b"x", b"")) * 2, "twice"),
    ],
)
def test_split_commit_data_refuses_broken_data(tdata, problem):
    with pytest.raises(ProtocolError, match=problem):
        protocol.split_commit_data(tdata)


def test_replies():
    record = pack_record(OID1, b"state", b"")
    assert protocol.record_reply(record) == b"O" + int4(len(record)) + record
    assert protocol.read_load_reply(reader(protocol.record_reply(record)), OID1) == record
    with pytest.raises(ReadConflictError):
        protocol.read_load_reply(reader(b"I"), OID1)
    with pytest.raises(DurusKeyError):
        protocol.read_load_reply(reader(b"K"), OID1)
    with pytest.raises(ProtocolError):
        protocol.read_load_reply(reader(b"?"), OID1)
    assert protocol.oids_reply([OID1, OID2]) == int4(2) + OID1 + OID2
    assert protocol.read_oids(reader(int4(2) + OID1 + OID2)) == [OID1, OID2]
    assert protocol.read_oids(reader(int4(0))) == []


def test_authentication_proofs():
    server_nonce, client_nonce = b"s" * 32, b"c" * 32
    client = protocol.authentication_proof(b"key", False, server_nonce, client_nonce)
    server = protocol.authentication_proof(b"key", True, server_nonce, client_nonce)
    assert len(client) == len(server) == protocol.PROOF_SIZE
    # Neither side's proof passes for the other's, nor with another key or nonce.
    assert client != server
    assert client != protocol.authentication_proof(b"other", False, server_nonce, client_nonce)
    assert client != protocol.authentication_proof(b"key", False, b"t" * 32, client_nonce)
    assert protocol.proofs_match(client, protocol.authentication_proof(b"key", False, server_nonce, client_nonce))


def test_read_secret(tmp_path):
    keyfile = tmp_path / "key"
    keyfile.write_bytes(b"  sekrit\n")
    assert protocol.read_secret(str(keyfile)) == b"sekrit"
    keyfile.write_bytes(b"\n")
    with pytest.raises(ValueError, match="empty"):
        protocol.read_secret(str(keyfile))


# -- version 2 -----------------------------------------------------------------


def test_version_2_layouts():
    assert protocol.version_request(2) == b"V\x00\x00\x00\x02"
    assert protocol.version_reply(1) == (int4(1), True)  # a Durus 4.3 client gets exactly 1
    assert protocol.version_reply(2) == (int4(2), True)
    assert protocol.version_reply(7) == (int4(1), False)  # as Durus 4.3 answers any other version
    record = pack_record(OID1, b"data", b"")
    assert protocol.commit_watched_request([(OID1, record)], [OID1, OID2]) == (
        b"W" + int4(4 + 8 + len(record)) + int4(8 + len(record)) + OID1 + record + int4(2) + OID1 + OID2)
    assert protocol.commit_watched_reply(b"O", [OID2]) == b"O" + int4(1) + OID2
    assert protocol.oids_reply(None) == b"\xff\xff\xff\xff"  # "everything"
    assert protocol.refused_reply("not stored: disk full") == b"F" + int4(21) + b"not stored: disk full"
    assert protocol.COMMIT_WATCHED == b"W" and protocol.STATUS_REFUSED == b"F"


def test_parse_commit_watched_waits_for_all_of_it_and_refuses_huge_counts():
    record = pack_record(OID1, b"data", b"")
    whole = protocol.commit_watched_request([(OID1, record)], [OID1])
    for cut in range(len(whole)):
        assert protocol.parse_request(bytearray(whole[:cut]), 0, 100) is None
    request, end = protocol.parse_request(bytearray(whole), 0, 100)
    assert end == len(whole)
    tdata, watched = request.argument
    assert protocol.split_commit_data(tdata) == {OID1: record} and watched == OID1
    with pytest.raises(ProtocolError, match="exceeds the limit"):
        protocol.parse_request(bytearray(b"W" + int4(1001)), 0, 100, max_commit_size=1000)
    with pytest.raises(ProtocolError, match="watching"):
        protocol.parse_request(bytearray(b"W" + int4(0) + int4(126)), 0, 100, max_commit_size=1000)


def test_read_version_2_replies():
    assert protocol.read_commit_watched_reply(reader(b"O" + int4(1) + OID1)) == (b"O", [OID1], None)
    assert protocol.read_commit_watched_reply(reader(b"I" + b"\xff" * 4)) == (b"I", None, None)
    assert protocol.read_commit_watched_reply(reader(b"F" + int4(4) + b"full")) == (b"F", [], "full")
    assert protocol.read_oids(reader(b"\xff" * 4)) is None
    with pytest.raises(ProtocolError):
        protocol.read_commit_watched_reply(reader(b"K"))
