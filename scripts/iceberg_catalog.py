"""Opens the Iceberg table a shardlake catalog URL names, with pyiceberg:
glue://DATABASE/TABLE (region, credentials and AWS_ENDPOINT_URL_GLUE /
AWS_ENDPOINT_URL_S3 as boto3 and the AWS CLI take them) or
sqlite://FILE/NAMESPACE/TABLE (shardlake's catalog name is "shardlake").
Shared by the scripts and the tests."""
import os


def load_table(url):
    if url.startswith("glue://"):
        from pyiceberg.catalog.glue import GlueCatalog

        database, table = url[len("glue://"):].strip("/").split("/")
        props = {}
        region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
        if region:
            props.update({"glue.region": region, "s3.region": region})
        for service, key in (("GLUE", "glue.endpoint"), ("S3", "s3.endpoint")):
            endpoint = os.environ.get(f"AWS_ENDPOINT_URL_{service}") or os.environ.get("AWS_ENDPOINT_URL")
            if endpoint:
                props[key] = endpoint
        return GlueCatalog("glue", **props).load_table(f"{database}.{table}")
    if url.startswith("sqlite://"):
        from pyiceberg.catalog.sql import SqlCatalog

        file, namespace, table = url[len("sqlite://"):].rsplit("/", 2)
        catalog = SqlCatalog("shardlake", uri="sqlite:///" + os.path.abspath(file), warehouse="file:///tmp")
        return catalog.load_table(f"{namespace}.{table}")
    raise SystemExit(f"{url}: not glue://DATABASE/TABLE or sqlite://FILE/NAMESPACE/TABLE")
