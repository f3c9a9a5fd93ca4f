//! The REST API: one function per route, all returning the contract's
//! errors through [`super::error_response`].

use std::net::IpAddr;
use std::str::FromStr;

use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use mesh_core::Error;
use mesh_core::protocol::http::{
    CapabilityRequest, CreateRoomRequest, HistoryPage, HistoryQuery, InviteRequest, LoginRequest,
    MemberResponse, MembersResponse, MessagesResponse, P2pSessionRequest, P2pSessionResponse,
    P2pSessionsResponse, PeersResponse, RegisterRequest, RoleRequest, RoomResponse, RoomsResponse,
    UpdateRoomRequest, UserResponse,
};
use mesh_core::protocol::{DeviceId, RoomId, SessionId, UserId};
use serde_json::json;

use super::request::{authenticate, query_param, read_json};
use super::response::{Body, empty, json_response};
use crate::AppState;

fn parse_id<T: FromStr>(raw: &str, what: &str) -> Result<T, Error> {
    raw.parse()
        .map_err(|_| Error::InvalidRequest(format!("{what} must be a UUID, got {raw:?}")))
}

fn parse_num<T: FromStr>(query: Option<&str>, name: &str) -> Result<Option<T>, Error> {
    query_param(query, name)
        .map(|v| {
            v.parse()
                .map_err(|_| Error::InvalidRequest(format!("{name} must be a whole number")))
        })
        .transpose()
}

/// `GET /health`: 200 when the store answers, 503 (with the store's
/// error) when it does not. A load balancer stops sending new clients to a
/// node that answers 503.
async fn health(svc: &mesh_core::service::Service) -> Response<Body> {
    let store = svc.store().ping().await;
    let bus = svc.bus_health().await;
    let mut body = json!({"status": "ok", "store": "ok"});
    let mut ok = true;
    if let Err(e) = &store {
        tracing::warn!("health check: the store does not answer: {e}");
        body["store"] = json!(e.to_string());
        ok = false;
    }
    if let Some(bus) = bus {
        body["bus"] = json!("ok");
        body["nodes"] = json!(svc.cluster_nodes());
        if let Err(e) = bus {
            tracing::warn!("health check: the bus does not answer: {e}");
            body["bus"] = json!(e.to_string());
            ok = false;
        }
    }
    if ok {
        json_response(StatusCode::OK, &body)
    } else {
        body["status"] = json!("unavailable");
        json_response(StatusCode::SERVICE_UNAVAILABLE, &body)
    }
}

fn not_allowed() -> Error {
    Error::MethodNotAllowed
}

/// Routes a request to its handler.
pub(super) async fn route(
    state: &AppState,
    client: IpAddr,
    req: Request<Incoming>,
) -> Result<Response<Body>, Error> {
    let path = req.uri().path().to_owned();
    let segments: Vec<&str> = path.trim_end_matches('/').split('/').skip(1).collect();
    let method = req.method().clone();
    let max = state.config.max_body_bytes;
    let svc = &state.service;
    match segments.as_slice() {
        ["health"] => match method {
            Method::GET => Ok(health(svc).await),
            _ => Err(not_allowed()),
        },
        ["ws"] => match method {
            Method::GET => super::ws::upgrade(state, client, req).await,
            _ => Err(not_allowed()),
        },
        ["api", "p2p", "relay"] => match method {
            Method::GET => super::relay_ws::upgrade(state, client, req).await,
            _ => Err(not_allowed()),
        },
        ["api", "auth", "register"] => match method {
            Method::POST => {
                let body: RegisterRequest = read_json(req, max).await?;
                let answer = svc.register_from(client, body).await?;
                Ok(json_response(StatusCode::CREATED, &answer))
            }
            _ => Err(not_allowed()),
        },
        ["api", "auth", "login"] => match method {
            Method::POST => {
                let body: LoginRequest = read_json(req, max).await?;
                let answer = svc.login_from(client, body).await?;
                Ok(json_response(StatusCode::OK, &answer))
            }
            _ => Err(not_allowed()),
        },
        ["api", "auth", "me"] => match method {
            Method::GET => {
                let identity = authenticate(state, &req, false).await?;
                let user = svc.me(&identity).await?;
                Ok(json_response(StatusCode::OK, &UserResponse { user }))
            }
            _ => Err(not_allowed()),
        },
        ["api", "auth", "keys"] => match method {
            Method::GET => Ok(json_response(StatusCode::OK, &svc.keys())),
            _ => Err(not_allowed()),
        },
        ["api", "auth", "capability"] => match method {
            Method::POST => {
                let identity = authenticate(state, &req, false).await?;
                let body: CapabilityRequest = read_json(req, max).await?;
                Ok(json_response(
                    StatusCode::OK,
                    &svc.capability(&identity, body)?,
                ))
            }
            _ => Err(not_allowed()),
        },
        ["api", "auth", "devices"] => match method {
            Method::GET => {
                let identity = authenticate(state, &req, false).await?;
                let devices = svc.devices(&identity).await?;
                Ok(json_response(
                    StatusCode::OK,
                    &json!({ "devices": devices }),
                ))
            }
            _ => Err(not_allowed()),
        },
        ["api", "auth", "devices", id] => match method {
            Method::DELETE => {
                let device: DeviceId = parse_id(id, "device id")?;
                let identity = authenticate(state, &req, false).await?;
                svc.revoke_device(&identity, device).await?;
                Ok(empty(StatusCode::NO_CONTENT))
            }
            _ => Err(not_allowed()),
        },
        ["api", "rooms"] => {
            let identity = authenticate(state, &req, false).await?;
            match method {
                Method::GET => {
                    let rooms = svc.list_rooms(&identity).await?;
                    Ok(json_response(StatusCode::OK, &RoomsResponse { rooms }))
                }
                Method::POST => {
                    let body: CreateRoomRequest = read_json(req, max).await?;
                    let room = svc.create_room(&identity, body).await?;
                    Ok(json_response(StatusCode::CREATED, &RoomResponse { room }))
                }
                _ => Err(not_allowed()),
            }
        }
        ["api", "rooms", id, rest @ ..] => {
            let room: RoomId = parse_id(id, "room id")?;
            let identity = authenticate(state, &req, false).await?;
            room_route(state, &identity, room, rest, req).await
        }
        ["api", "rtc", "ice-servers"] => match method {
            Method::GET => {
                let identity = authenticate(state, &req, false).await?;
                // Calls ride the WebSocket, which needs `messages:write`.
                if !identity.allows(mesh_core::auth::Scope::MessagesWrite) {
                    return Err(Error::Forbidden(
                        "this capability token does not allow \"messages:write\"".into(),
                    ));
                }
                let answer = state
                    .config
                    .ice
                    .ice_servers(identity.user_id, mesh_core::protocol::Timestamp::now());
                Ok(json_response(StatusCode::OK, &answer))
            }
            _ => Err(not_allowed()),
        },
        ["api", "p2p", "session"] => match method {
            Method::POST => {
                let identity = authenticate(state, &req, false).await?;
                let body: P2pSessionRequest = read_json(req, max).await?;
                let (session, session_token) = svc
                    .create_session(
                        &identity,
                        body.room_id,
                        body.target_peer_id,
                        body.kind,
                        body.initiator_peer_id,
                        None,
                    )
                    .await?;
                Ok(json_response(
                    StatusCode::CREATED,
                    &P2pSessionResponse {
                        session,
                        session_token,
                    },
                ))
            }
            _ => Err(not_allowed()),
        },
        ["api", "p2p", "sessions"] => match method {
            Method::GET => {
                let identity = authenticate(state, &req, false).await?;
                let sessions = svc.sessions(&identity)?;
                Ok(json_response(
                    StatusCode::OK,
                    &P2pSessionsResponse { sessions },
                ))
            }
            _ => Err(not_allowed()),
        },
        ["api", "p2p", "session", id] => match method {
            Method::DELETE => {
                let session: SessionId = parse_id(id, "session id")?;
                let identity = authenticate(state, &req, false).await?;
                svc.close_session(&identity, session)?;
                Ok(empty(StatusCode::NO_CONTENT))
            }
            _ => Err(not_allowed()),
        },
        _ => Err(Error::NotFound(format!("no route for {path}"))),
    }
}

async fn room_route(
    state: &AppState,
    identity: &mesh_core::auth::Identity,
    room: RoomId,
    rest: &[&str],
    req: Request<Incoming>,
) -> Result<Response<Body>, Error> {
    let svc = &state.service;
    let max = state.config.max_body_bytes;
    let method = req.method().clone();
    match (rest, method) {
        ([], Method::GET) => {
            let room = svc.get_room(identity, room).await?;
            Ok(json_response(StatusCode::OK, &RoomResponse { room }))
        }
        ([], Method::PATCH) => {
            let body: UpdateRoomRequest = read_json(req, max).await?;
            let room = svc.update_room(identity, room, body).await?;
            Ok(json_response(StatusCode::OK, &RoomResponse { room }))
        }
        ([], Method::DELETE) => {
            svc.delete_room(identity, room).await?;
            Ok(empty(StatusCode::NO_CONTENT))
        }
        (["members"], Method::GET) => {
            let members = svc.members(identity, room).await?;
            Ok(json_response(StatusCode::OK, &MembersResponse { members }))
        }
        (["members"], Method::POST) => {
            let body: InviteRequest = read_json(req, max).await?;
            let member = svc.invite(identity, room, body).await?;
            Ok(json_response(
                StatusCode::CREATED,
                &MemberResponse { member },
            ))
        }
        (["members", user], Method::PATCH) => {
            let user: UserId = parse_id(user, "user id")?;
            let body: RoleRequest = read_json(req, max).await?;
            let member = svc.set_role(identity, room, user, body.role).await?;
            Ok(json_response(StatusCode::OK, &MemberResponse { member }))
        }
        (["members", user], Method::DELETE) => {
            let user: UserId = parse_id(user, "user id")?;
            svc.remove_member(identity, room, user).await?;
            Ok(empty(StatusCode::NO_CONTENT))
        }
        (["peers"], Method::GET) => {
            let peers = svc.peers(identity, room).await?;
            Ok(json_response(StatusCode::OK, &PeersResponse { peers }))
        }
        (["messages"], Method::GET) => {
            let query = req.uri().query();
            let before = parse_num(query, "before")?;
            let after = parse_num(query, "after")?;
            let Some(page) = HistoryPage::from_bounds(before, after) else {
                // Only a reader learns what is wrong with the query.
                svc.require_reader(identity, room).await?;
                return Err(Error::InvalidRequest(
                    "give `before` or `after`, not both".into(),
                ));
            };
            // Any whole number is a limit: the service caps it at 100.
            let limit =
                parse_num::<u64>(query, "limit")?.map(|n| u32::try_from(n).unwrap_or(u32::MAX));
            let page = svc
                .messages(identity, room, HistoryQuery { page, limit })
                .await?;
            Ok(json_response(
                StatusCode::OK,
                &MessagesResponse {
                    messages: page.messages,
                    has_more: page.has_more,
                },
            ))
        }
        (["join"], Method::POST) => {
            let room = svc.join_room(identity, room).await?;
            Ok(json_response(StatusCode::OK, &RoomResponse { room }))
        }
        (["leave"], Method::POST) => {
            svc.leave_room(identity, room, None).await?;
            Ok(empty(StatusCode::NO_CONTENT))
        }
        (
            [] | ["members"] | ["members", _] | ["messages"] | ["peers"] | ["join"] | ["leave"],
            _,
        ) => Err(not_allowed()),
        _ => Err(Error::NotFound("no such route".into())),
    }
}
