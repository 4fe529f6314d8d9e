//! The CustomResourceDefinitions of every bosun resource, generated from the
//! Rust types so that the schema and the code can never disagree.

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResourceExt;

use crate::{EtcdBackup, EtcdCluster, EtcdRestore};

/// Every CRD bosun installs, in a stable order.
pub fn all() -> Vec<CustomResourceDefinition> {
    vec![EtcdCluster::crd(), EtcdBackup::crd(), EtcdRestore::crd()]
}
