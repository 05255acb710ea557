"""Mutual TLS: a `tls://` scheduler and workers that only talk to certificate holders.

The certificates are made here with ``cryptography`` (a CA, one certificate for
the nodes, one for the notebook, and one from a foreign CA), and the cluster is
stock ``dask scheduler`` / ``dask worker`` with Dask's own ``--tls-*`` flags.
"""

from __future__ import annotations

import datetime
import ipaddress
import sys

import cloudpickle
import dask
import distributed  # noqa: F401  (loads its config defaults before any dask.config.set)
import pytest
from conftest import BLOCK_PRELOAD, scheduler_task_count

import dc_jupyter
from dc_jupyter import SchedulerUnreachableError, compute_this
from dc_jupyter.tools.cluster import ProcessCluster

cloudpickle.register_pickle_by_value(sys.modules[__name__])


def _make_cert(common_name: str, issuer=None):
    """A key and certificate; self-signed CA when ``issuer`` is None, else a leaf
    for 127.0.0.1 signed by ``issuer`` (a (key, cert) pair)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
    )
    if issuer is None:
        builder = builder.issuer_name(name).add_extension(
            x509.BasicConstraints(ca=True, path_length=None), critical=True
        )
        return key, builder.sign(key, hashes.SHA256())
    issuer_key, issuer_cert = issuer
    builder = (
        builder.issuer_name(issuer_cert.subject)
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
    )
    return key, builder.sign(issuer_key, hashes.SHA256())


def _write(path, key=None, cert=None) -> str:
    from cryptography.hazmat.primitives import serialization

    data = b""
    if cert is not None:
        data += cert.public_bytes(serialization.Encoding.PEM)
    if key is not None:
        data += key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    path.write_bytes(data)
    return str(path)


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    d = tmp_path_factory.mktemp("certs")
    ca = _make_cert("dc-jupyter test CA")
    node = _make_cert("node", issuer=ca)
    notebook = _make_cert("notebook", issuer=ca)
    foreign_ca = _make_cert("someone else's CA")
    intruder = _make_cert("intruder", issuer=foreign_ca)
    files = {"ca": _write(d / "ca.pem", cert=ca[1])}
    for label, (key, cert) in {"node": node, "client": notebook, "intruder": intruder}.items():
        files[f"{label}-cert"] = _write(d / f"{label}.pem", cert=cert)
        files[f"{label}-key"] = _write(d / f"{label}.key", key=key)
    return files


def _tls_config(certs, who="client") -> dict:
    return {
        "distributed.comm.tls.ca-file": certs["ca"],
        "distributed.comm.tls.client.cert": certs[f"{who}-cert"],
        "distributed.comm.tls.client.key": certs[f"{who}-key"],
        "distributed.comm.require-encryption": True,
    }


@pytest.fixture(scope="module")
def tls_cluster(certs, tmp_path_factory):
    node = ["--tls-ca-file", certs["ca"], "--tls-cert", certs["node-cert"]]
    node += ["--tls-key", certs["node-key"]]
    c = ProcessCluster(
        n_workers=1,
        scheduler_args=["--protocol", "tls", *node],
        worker_args=["--preload", BLOCK_PRELOAD, *node],
        workdir=str(tmp_path_factory.mktemp("tls")),
    )
    try:
        with dask.config.set(_tls_config(certs)):  # so the start-up check can connect
            c.start()
        yield c
    finally:  # also when start() fails: no orphaned scheduler or worker
        c.stop()


@pytest.fixture
def trusted_client(certs, tls_cluster):
    from distributed import Client
    from distributed.security import Security

    security = Security(
        tls_ca_file=certs["ca"],
        tls_client_cert=certs["client-cert"],
        tls_client_key=certs["client-key"],
        require_encryption=True,
    )
    with Client(tls_cluster.address, security=security, set_as_default=False) as client:
        yield client


def test_address_is_tls(tls_cluster):
    assert tls_cluster.address.startswith("tls://127.0.0.1:")


def test_client_with_certificates_works(tls_cluster, trusted_client):
    @compute_this(client=trusted_client)
    def square(x):
        return x * x

    assert square(7).compute() == 49
    assert square.map(range(4)).compute() == [0, 1, 4, 9]


def test_connect_with_dask_tls_settings_works(certs, tls_cluster):
    with dask.config.set(_tls_config(certs)):
        dc_jupyter.connect(tls_cluster.address)
        assert compute_this(lambda: "over tls")().compute() == "over tls"


@pytest.mark.parametrize(
    "who, expected",
    [
        (None, "refused this client: this client has no TLS certificates configured"),
        ("intruder", "refused this client: the TLS handshake failed"),
    ],
    ids=["no-certificates", "foreign-ca"],
)
def test_client_without_valid_certificates_is_refused(
    certs, tls_cluster, trusted_client, who, expected
):
    settings = {"dc_jupyter.connect-timeout": "10s"}  # refusal is immediate; slack for load
    if who:
        settings.update(_tls_config(certs, who))
    before = scheduler_task_count(trusted_client)
    clients_before = trusted_client.run_on_scheduler(
        lambda dask_scheduler: len(dask_scheduler.clients)
    )
    with dask.config.set(settings):
        with pytest.raises(SchedulerUnreachableError, match=expected) as info:
            dc_jupyter.connect(tls_cluster.address)
        with pytest.raises(SchedulerUnreachableError, match="certificates"):
            compute_this(address=tls_cluster.address)(lambda: 1)().compute()
    message = str(info.value)
    assert tls_cluster.address in message and "distributed.comm.tls.ca-file" in message
    assert scheduler_task_count(trusted_client) == before
    clients_after = trusted_client.run_on_scheduler(
        lambda dask_scheduler: len(dask_scheduler.clients)
    )
    assert clients_after == clients_before  # nobody got in


def test_plain_tcp_to_a_tls_scheduler_says_to_use_tls(tls_cluster):
    plain = tls_cluster.address.replace("tls://", "tcp://")
    with dask.config.set({"dc_jupyter.connect-timeout": "3s"}):
        with pytest.raises(SchedulerUnreachableError, match="tls:// address and certificates"):
            dc_jupyter.connect(plain)
