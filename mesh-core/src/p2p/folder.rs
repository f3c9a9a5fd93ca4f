//! stub
#[derive(Debug)]
pub struct FolderReport;
