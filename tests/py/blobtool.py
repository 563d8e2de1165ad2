#!/usr/bin/env python3
"""The tests' independent Azure Blob client (azure-storage-blob), so what
breakglass wrote is read back by other code than breakglass's own.

usage: blobtool.py ACCOUNT_URL CA_BUNDLE|- COMMAND ARGS...
  create-container NAME
  get CONTAINER BLOB OUT      download BLOB to OUT, print its properties (and
                              the MD5 of what was downloaded) as JSON
  list CONTAINER PREFIX       print the blob names under PREFIX as JSON
  put CONTAINER BLOB TEXT     write a blob (to seed an older copy)
  sas CONTAINER PERMISSIONS   print a container SAS token (e.g. `c`, `cw`, `rl`)
  ping                        succeed once the server answers
The credential is Azurite's well-known development account and key.
"""
import datetime, hashlib, json, sys
from azure.storage.blob import BlobServiceClient, ContainerSasPermissions, generate_container_sas

ACCOUNT = "devstoreaccount1"
KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="


def main(account_url, ca, command, *args):
    service = BlobServiceClient(
        account_url=account_url,
        credential={"account_name": ACCOUNT, "account_key": KEY},
        connection_verify=(ca if ca != "-" else True),
        retry_total=1,
        # The newest service version Azurite knows; newer SDKs default to
        # versions it has not heard of yet.
        api_version="2025-11-05",
    )
    if command == "create-container":
        service.create_container(args[0])
    elif command == "get":
        container, blob, out = args
        client = service.get_blob_client(container, blob)
        downloader = client.download_blob()
        with open(out, "wb") as f:
            downloader.readinto(f)
        digest = hashlib.md5()
        with open(out, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
        props = client.get_blob_properties()
        md5 = props.content_settings.content_md5
        print(json.dumps({
            "metadata": props.metadata,
            "length": props.size,
            "content_type": props.content_settings.content_type,
            "content_md5": bytes(md5).hex() if md5 else None,
            "downloaded_md5": digest.hexdigest(),
            "blob_type": str(props.blob_type),
        }))
    elif command == "list":
        container, prefix = args
        names = service.get_container_client(container).list_blob_names(name_starts_with=prefix or None)
        print(json.dumps(sorted(names)))
    elif command == "put":
        container, blob, text = args
        service.get_blob_client(container, blob).upload_blob(text.encode(), overwrite=True)
    elif command == "sas":
        container, permissions = args
        now = datetime.datetime.now(datetime.timezone.utc)
        print(generate_container_sas(
            ACCOUNT, container, account_key=KEY,
            permission=ContainerSasPermissions.from_string(permissions),
            start=now - datetime.timedelta(minutes=5),
            expiry=now + datetime.timedelta(hours=1),
        ))
    elif command == "ping":
        list(service.list_containers())
    else:
        raise SystemExit("unknown command " + command)


if __name__ == "__main__":
    main(*sys.argv[1:])
