"""Schemas for the custom resources, which kubernetes-validate does not know.

Written from the operators' API types (RabbitMQ Cluster Operator rabbitmq.com/v1beta1,
CloudNativePG postgresql.cnpg.io/v1, Traefik v3 traefik.io/v1alpha1), not copied from their CRDs:
the fields those APIs require, the spec fields they define (so a misspelt field fails here
instead of being silently pruned by the API server), the types and enums of the fields we use,
and what we require on top (a pinned image, resources, persistent storage).
"""

from __future__ import annotations

import jsonschema

QUANTITY = {"type": ["string", "integer"], "pattern": r"^[0-9]+(\.[0-9]+)?(m|k|Ki|Mi|Gi|Ti|M|G|T)?$"}
PINNED_IMAGE = {"type": "string", "pattern": r"^[^@\s]+(@sha256:[0-9a-f]{64}|:(?!latest$)[\w][\w.-]{0,127})$"}
RESOURCES = {
    "type": "object",
    "required": ["requests", "limits"],
    "properties": {
        section: {
            "type": "object",
            "required": ["cpu", "memory"],
            "properties": {"cpu": QUANTITY, "memory": QUANTITY},
        }
        for section in ("requests", "limits")
    },
}
METADATA = {
    "type": "object",
    "required": ["name"],
    "properties": {"name": {"type": "string", "pattern": r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", "maxLength": 63}},
}


def resource(api_version: str, kind: str, spec: dict) -> dict:
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "type": "object",
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "properties": {
            "apiVersion": {"const": api_version},
            "kind": {"const": kind},
            "metadata": METADATA,
            "spec": spec,
        },
    }


RABBITMQ_CLUSTER = resource("rabbitmq.com/v1beta1", "RabbitmqCluster", {
    "type": "object",
    "additionalProperties": False,
    # The API requires only `replicas`; image, resources and persistence are ours to pin.
    "required": ["replicas", "image", "resources", "persistence"],
    "properties": {
        "replicas": {"type": "integer", "enum": [1, 3, 5]},  # the sizes the operator supports
        "image": PINNED_IMAGE,
        "imagePullSecrets": {"type": "array"},
        "service": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "type": {"enum": ["ClusterIP", "LoadBalancer", "NodePort"]},
                "annotations": {"type": "object"},
                "ipFamilyPolicy": {"type": "string"},
            },
        },
        "persistence": {
            "type": "object",
            "additionalProperties": False,
            "required": ["storage"],
            "properties": {"storage": QUANTITY, "storageClassName": {"type": "string"}},
        },
        "resources": RESOURCES,
        "affinity": {"type": "object"},
        "tolerations": {"type": "array"},
        "rabbitmq": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "additionalPlugins": {
                    "type": "array", "maxItems": 100,
                    "items": {"type": "string", "pattern": r"^\w+$", "maxLength": 100},
                },
                "additionalConfig": {"type": "string", "maxLength": 2000},
                "advancedConfig": {"type": "string", "maxLength": 100000},
                "envConfig": {"type": "string", "maxLength": 100000},
                "erlangInetConfig": {"type": "string"},
            },
        },
        "tls": {"type": "object"},
        "override": {"type": "object"},
        "skipPostDeploySteps": {"type": "boolean"},
        "terminationGracePeriodSeconds": {"type": "integer", "minimum": 0},
        "delayStartSeconds": {"type": "integer", "minimum": 0},
        "secretBackend": {"type": "object"},
        "autoEnableAllFeatureFlags": {"type": "boolean"},
    },
})

CNPG_CLUSTER = resource("postgresql.cnpg.io/v1", "Cluster", {
    "type": "object",
    "additionalProperties": False,
    # The API requires `instances`; the rest is ours: a pinned image, storage, resources, and
    # an application database whose generated Secret (<name>-app) the services read.
    "required": ["instances", "imageName", "storage", "resources", "bootstrap"],
    "properties": {
        "instances": {"type": "integer", "minimum": 1},
        "imageName": PINNED_IMAGE,
        "storage": {
            "type": "object",
            "required": ["size"],
            "properties": {
                "size": QUANTITY,
                "storageClass": {"type": "string"},
                "resizeInUseVolumes": {"type": "boolean"},
                "pvcTemplate": {"type": "object"},
            },
            "additionalProperties": False,
        },
        "bootstrap": {
            "type": "object",
            "required": ["initdb"],
            "properties": {
                "initdb": {
                    "type": "object",
                    "required": ["database", "owner"],
                    "properties": {"database": {"type": "string"}, "owner": {"type": "string"}},
                },
            },
        },
        "postgresql": {
            "type": "object",
            "properties": {
                "parameters": {"type": "object", "additionalProperties": {"type": "string"}},
                "synchronous": {
                    "type": "object",
                    "required": ["method", "number"],
                    "properties": {
                        "method": {"enum": ["any", "first"]},
                        "number": {"type": "integer", "minimum": 1},
                        "dataDurability": {"enum": ["required", "preferred"]},
                    },
                },
                "pg_hba": {"type": "array"},
                "pg_ident": {"type": "array"},
            },
        },
        "resources": RESOURCES,
        "primaryUpdateStrategy": {"enum": ["unsupervised", "supervised"]},
        "primaryUpdateMethod": {"enum": ["switchover", "restart"]},
        "affinity": {
            "type": "object",
            "properties": {
                "enablePodAntiAffinity": {"type": "boolean"},
                "topologyKey": {"type": "string"},
                "podAntiAffinityType": {"enum": ["preferred", "required"]},
            },
        },
        "logLevel": {"enum": ["error", "warning", "info", "debug", "trace"]},
        **{field: {} for field in (
            "description", "inheritedMetadata", "imageCatalogRef", "imagePullPolicy", "schedulerName",
            "postgresUID", "postgresGID", "minSyncReplicas", "maxSyncReplicas", "replicationSlots",
            "replica", "superuserSecret", "enableSuperuserAccess", "certificates", "imagePullSecrets",
            "serviceAccountTemplate", "walStorage", "ephemeralVolumeSource", "startDelay", "stopDelay",
            "smartShutdownTimeout", "switchoverDelay", "failoverDelay", "livenessProbeTimeout",
            "topologySpreadConstraints", "ephemeralVolumesSizeLimit", "priorityClassName", "backup",
            "nodeMaintenanceWindow", "monitoring", "externalClusters", "projectedVolumeTemplate", "env",
            "envFrom", "managed", "seccompProfile", "podSecurityContext", "securityContext",
            "tablespaces", "enablePDB", "plugins", "probes",
        )},
    },
})

ROUTE_SERVICE = {
    "type": "object",
    "required": ["name"],
    "properties": {
        "name": {"type": "string", "minLength": 1},
        "kind": {"enum": ["Service", "TraefikService"]},
        "namespace": {"type": "string"},
        "port": {"type": ["integer", "string"]},
        "scheme": {"type": "string"},
        "weight": {"type": "integer", "minimum": 0},
        "passHostHeader": {"type": "boolean"},
    },
}

INGRESS_ROUTE = resource("traefik.io/v1alpha1", "IngressRoute", {
    "type": "object",
    "additionalProperties": False,
    "required": ["routes"],
    "properties": {
        "entryPoints": {"type": "array", "minItems": 1, "items": {"type": "string"}},
        "routes": {
            "type": "array",
            "minItems": 1,
            "items": {
                "type": "object",
                "required": ["match", "services"],  # Traefik requires match; a route without services serves nothing
                "additionalProperties": False,
                "properties": {
                    "match": {"type": "string", "minLength": 1},
                    "kind": {"enum": ["Rule"]},
                    "priority": {"type": "integer"},
                    "syntax": {"type": "string"},
                    "services": {"type": "array", "minItems": 1, "items": ROUTE_SERVICE},
                    "middlewares": {
                        "type": "array",
                        "items": {"type": "object", "required": ["name"]},
                    },
                    "observability": {"type": "object"},
                },
            },
        },
        "tls": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "secretName": {"type": "string"},
                "certResolver": {"type": "string"},
                "options": {"type": "object", "required": ["name"]},
                "store": {"type": "object", "required": ["name"]},
                "domains": {"type": "array"},
            },
        },
        "parentRefs": {"type": "array"},
    },
})

SCHEMAS = {
    ("rabbitmq.com/v1beta1", "RabbitmqCluster"): RABBITMQ_CLUSTER,
    ("postgresql.cnpg.io/v1", "Cluster"): CNPG_CLUSTER,
    ("traefik.io/v1alpha1", "IngressRoute"): INGRESS_ROUTE,
}


def is_custom(doc: dict) -> bool:
    return "." in doc["apiVersion"].split("/")[0] and not doc["apiVersion"].split("/")[0].endswith(".k8s.io")


def validate(doc: dict) -> list[str]:
    """Every problem in one custom resource, as readable lines; [] when it is fine."""
    schema = SCHEMAS.get((doc.get("apiVersion"), doc.get("kind")))
    if schema is None:
        return [f"{doc.get('apiVersion')} {doc.get('kind')}: no schema here; add one to crd_schemas.py"]
    validator = jsonschema.Draft202012Validator(schema)
    return [
        f"{doc['kind']}/{doc.get('metadata', {}).get('name')}: "
        f"{'/'.join(map(str, e.absolute_path)) or '(root)'}: {e.message}"
        for e in validator.iter_errors(doc)
    ]
