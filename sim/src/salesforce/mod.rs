//! stub
/// stub
#[derive(Debug, Clone, Default)]
pub struct SalesforceConfig {}
/// stub
pub struct SalesforceSim {}
