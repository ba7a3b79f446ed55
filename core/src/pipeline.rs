//! Executions: the reconcilers that run pipelines, and what they need — durable
//! step logs, secrets, workspaces and step caches, cron schedules.

pub mod logs;
pub mod schedule;
pub mod secrets;
pub mod workspace;
