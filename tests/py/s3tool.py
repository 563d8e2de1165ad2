#!/usr/bin/env python3
"""The tests' independent S3 client (boto3), so what breakglass wrote is read
back by other code than breakglass's own.

usage: s3tool.py ENDPOINT CA_BUNDLE|- COMMAND ARGS...
  create-bucket BUCKET [versioned|''] [REGION]
  get BUCKET KEY OUT        download KEY to OUT, print its metadata as JSON
  list BUCKET PREFIX        print the keys under PREFIX as JSON
  put BUCKET KEY TEXT       write an object (to seed an older copy)
  lifecycle BUCKET PREFIX DAYS  expire objects under PREFIX after DAYS days
  iam-user NAME POLICY_JSON create a user with an inline policy, print keys as JSON
  enforce-iam               make moto check credentials from now on
  ping                      succeed once the server answers
S3TOOL_KEY / S3TOOL_SECRET choose the credential (default: moto's open root).
"""
import json, os, sys
import boto3
from botocore.config import Config

ROOT_KEY, ROOT_SECRET = "testing-root", "testing-root-secret"


def client(service, endpoint, ca, key=None, secret=None):
    key = key or os.environ.get("S3TOOL_KEY", ROOT_KEY)
    secret = secret or os.environ.get("S3TOOL_SECRET", ROOT_SECRET)
    return boto3.client(
        service, endpoint_url=endpoint, region_name="us-east-1",
        aws_access_key_id=key, aws_secret_access_key=secret,
        verify=(ca if ca != "-" else None),
        config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 2}),
    )


def main(endpoint, ca, command, *args):
    s3 = client("s3", endpoint, ca)
    if command == "create-bucket":
        if len(args) > 2 and args[2]:
            s3.create_bucket(Bucket=args[0], CreateBucketConfiguration={"LocationConstraint": args[2]})
        else:
            s3.create_bucket(Bucket=args[0])
        if len(args) > 1 and args[1] == "versioned":
            s3.put_bucket_versioning(Bucket=args[0], VersioningConfiguration={"Status": "Enabled"})
    elif command == "get":
        bucket, key, out = args
        response = s3.get_object(Bucket=bucket, Key=key)
        with open(out, "wb") as f:
            f.write(response["Body"].read())
        print(json.dumps({"metadata": response["Metadata"], "etag": response["ETag"].strip('"'),
                          "length": response["ContentLength"]}))
    elif command == "list":
        bucket, prefix = args
        pages = s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
        print(json.dumps(sorted(o["Key"] for p in pages for o in p.get("Contents", []))))
    elif command == "put":
        bucket, key, text = args
        s3.put_object(Bucket=bucket, Key=key, Body=text.encode())
    elif command == "tamper":
        # Rewrites an object as an attacker or a broken disk would: the
        # bytes change (flip one, or cut in half), the metadata stays.
        bucket, key, mode = args
        response = s3.get_object(Bucket=bucket, Key=key)
        body = response["Body"].read()
        body = body[: len(body) // 2] if mode == "truncate" else body[:-1] + bytes([body[-1] ^ 1])
        s3.put_object(Bucket=bucket, Key=key, Body=body, Metadata=response["Metadata"])
    elif command == "lifecycle":
        bucket, prefix, days = args
        s3.put_bucket_lifecycle_configuration(Bucket=bucket, LifecycleConfiguration={"Rules": [
            {"ID": "breakglass-expire", "Status": "Enabled", "Filter": {"Prefix": prefix},
             "Expiration": {"Days": int(days)}}]})
    elif command == "iam-user":
        name, policy = args
        iam = client("iam", endpoint, ca)
        iam.create_user(UserName=name)
        iam.put_user_policy(UserName=name, PolicyName=name + "-policy", PolicyDocument=policy)
        key = iam.create_access_key(UserName=name)["AccessKey"]
        print(json.dumps({"id": key["AccessKeyId"], "secret": key["SecretAccessKey"]}))
    elif command == "ping":
        s3.list_buckets()
    elif command == "enforce-iam":
        import urllib.request, ssl
        context = ssl.create_default_context(cafile=ca) if ca != "-" else None
        request = urllib.request.Request(endpoint + "/moto-api/reset-auth", data=b"0",
                                         headers={"Content-Type": "text/plain"}, method="POST")
        urllib.request.urlopen(request, context=context).read()
    else:
        raise SystemExit("unknown command " + command)


if __name__ == "__main__":
    main(*sys.argv[1:])
