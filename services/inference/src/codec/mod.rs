//! One codec per wire format: conversions between a wire's messages and the
//! core's types, pure and free of any transport. The gRPC and HTTP adapters
//! both use them; neither imports the other.

pub(crate) mod mlflow;
pub(crate) mod oip;
pub(crate) mod pb;
pub(crate) mod row;
