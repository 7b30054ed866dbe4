//! The JSON of Docker's remote network driver protocol (moby
//! `libnetwork/drivers/remote/api`, `pkg/plugins`), field for field.
//! Requests tolerate fields they do not use (Docker adds some across
//! versions); responses carry only what the protocol defines.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// The answer to every call that has nothing else to say, and the error
/// form: `{"Err": "..."}`.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ErrResponse {
    pub err: String,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ActivateResponse {
    pub implements: Vec<String>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct CapabilitiesResponse {
    pub scope: String,
    pub connectivity_scope: String,
}

/// libnetwork's `driverapi.IPAMData` as JSON.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct IpamData {
    #[serde(default)]
    pub address_space: String,
    /// The subnet, `10.30.0.0/24`.
    pub pool: String,
    /// `10.30.0.1/24`.
    #[serde(default)]
    pub gateway: String,
    #[serde(default)]
    pub aux_addresses: Option<Map<String, Value>>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct CreateNetworkRequest {
    #[serde(rename = "NetworkID")]
    pub network_id: String,
    #[serde(rename = "Options", default)]
    pub options: Option<Map<String, Value>>,
    #[serde(rename = "IPv4Data", default)]
    pub ipv4_data: Option<Vec<IpamData>>,
    #[serde(rename = "IPv6Data", default)]
    pub ipv6_data: Option<Vec<IpamData>>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct NetworkRequest {
    #[serde(rename = "NetworkID")]
    pub network_id: String,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct EndpointInterface {
    /// `10.30.0.2/24`; empty: the driver chooses.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub address: String,
    #[serde(rename = "AddressIPv6", default, skip_serializing_if = "String::is_empty")]
    pub address_ipv6: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub mac_address: String,
}

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct CreateEndpointRequest {
    #[serde(rename = "NetworkID")]
    pub network_id: String,
    #[serde(rename = "EndpointID")]
    pub endpoint_id: String,
    #[serde(rename = "Interface", default)]
    pub interface: Option<EndpointInterface>,
    #[serde(rename = "Options", default)]
    pub options: Option<Map<String, Value>>,
}

/// `Interface` holds only what the driver chose (Docker refuses a driver
/// that "changes" an address or MAC it gave).
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct CreateEndpointResponse {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub interface: Option<EndpointInterface>,
}

/// DeleteEndpoint, EndpointOperInfo, Leave, RevokeExternalConnectivity.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct EndpointRequest {
    #[serde(rename = "NetworkID")]
    pub network_id: String,
    #[serde(rename = "EndpointID")]
    pub endpoint_id: String,
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct EndpointInfoResponse {
    pub value: Map<String, Value>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct JoinRequest {
    #[serde(rename = "NetworkID")]
    pub network_id: String,
    #[serde(rename = "EndpointID")]
    pub endpoint_id: String,
    #[serde(rename = "SandboxKey", default)]
    pub sandbox_key: String,
    #[serde(rename = "Options", default)]
    pub options: Option<Map<String, Value>>,
}

#[derive(Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct InterfaceName {
    /// The interface Docker moves into the sandbox.
    pub src_name: String,
    /// Docker names it PREFIX + a number (`eth0`).
    pub dst_prefix: String,
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct JoinResponse {
    pub interface_name: InterfaceName,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub gateway: String,
    #[serde(rename = "GatewayIPv6", default, skip_serializing_if = "String::is_empty")]
    pub gateway_ipv6: String,
    pub disable_gateway_service: bool,
}

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct ExternalConnectivityRequest {
    #[serde(rename = "NetworkID")]
    pub network_id: String,
    #[serde(rename = "EndpointID")]
    pub endpoint_id: String,
    #[serde(rename = "Options", default)]
    pub options: Option<Map<String, Value>>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_requests_parse() {
        // As dockerd 20.10 sends them.
        let net: CreateNetworkRequest = serde_json::from_str(
            r#"{"NetworkID":"ab12","Options":{"com.docker.network.enable_ipv6":false,
               "com.docker.network.generic":{"com.docker.network.bridge.enable_icc":"false"}},
               "IPv4Data":[{"AddressSpace":"LocalDefault","Gateway":"10.30.0.1/24","Pool":"10.30.0.0/24"}],
               "IPv6Data":[]}"#,
        )
        .unwrap();
        assert_eq!(net.network_id, "ab12");
        assert_eq!(net.ipv4_data.unwrap()[0].gateway, "10.30.0.1/24");
        let ep: CreateEndpointRequest = serde_json::from_str(
            r#"{"NetworkID":"n","EndpointID":"e","Interface":{"Address":"10.30.0.2/24","AddressIPv6":"","MacAddress":""},"Options":{}}"#,
        )
        .unwrap();
        assert_eq!(ep.interface.unwrap().address, "10.30.0.2/24");
    }

    #[test]
    fn responses_have_the_protocol_names() {
        let join = JoinResponse {
            interface_name: InterfaceName { src_name: "dpc1".into(), dst_prefix: "eth".into() },
            gateway: "10.30.0.1".into(),
            gateway_ipv6: String::new(),
            disable_gateway_service: false,
        };
        assert_eq!(
            serde_json::to_string(&join).unwrap(),
            r#"{"InterfaceName":{"SrcName":"dpc1","DstPrefix":"eth"},"Gateway":"10.30.0.1","DisableGatewayService":false}"#
        );
        let join6 = JoinResponse { gateway_ipv6: "fd00:30::1".into(), ..join };
        assert!(serde_json::to_string(&join6).unwrap().contains(r#""GatewayIPv6":"fd00:30::1""#));
        let ep6 = EndpointInterface { address_ipv6: "fd00:30::2/64".into(), ..Default::default() };
        assert_eq!(serde_json::to_string(&ep6).unwrap(), r#"{"AddressIPv6":"fd00:30::2/64"}"#);
        let ep = CreateEndpointResponse {
            interface: Some(EndpointInterface { mac_address: "02:00:00:00:00:01".into(), ..Default::default() }),
        };
        assert_eq!(serde_json::to_string(&ep).unwrap(), r#"{"Interface":{"MacAddress":"02:00:00:00:00:01"}}"#);
        assert_eq!(serde_json::to_string(&CreateEndpointResponse::default()).unwrap(), "{}");
        assert_eq!(serde_json::to_string(&ErrResponse { err: "x".into() }).unwrap(), r#"{"Err":"x"}"#);
        let caps = CapabilitiesResponse { scope: "local".into(), connectivity_scope: "local".into() };
        assert_eq!(serde_json::to_string(&caps).unwrap(), r#"{"Scope":"local","ConnectivityScope":"local"}"#);
    }
}
