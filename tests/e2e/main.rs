//! End-to-end tests: real components built from `plugins/`, a real engine,
//! real HTTP on 127.0.0.1, the real `backstop` binary.

mod breakers;
mod cli;
mod common;
mod conformance;
mod containment;
mod corpus;
mod demo;
mod escalations;
mod guards;
mod hostile;
mod hosts;
mod input;
mod languages;
mod layers;
mod loading;
mod mcp;
mod models;
mod operate;
mod postgres;
mod queue;
mod remote;
mod runs;
mod sandbox;
mod scaffold;
