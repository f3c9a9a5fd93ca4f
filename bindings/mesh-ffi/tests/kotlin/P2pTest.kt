// P2P transfers between two agents through the generated Kotlin binding:
// real QUIC on loopback, sessions granted by the mesh-server ChatTest.kt
// started; each report says the path the session took (`via`). Compiled
// with ChatTest.kt (its helpers and main) by run.sh.

import java.io.File
import java.nio.file.Files
import uniffi.mesh_ffi.AgentConfig
import uniffi.mesh_ffi.MeshAgent
import uniffi.mesh_ffi.MeshApi
import uniffi.mesh_ffi.TransferReport
import uniffi.mesh_ffi.startAgent

/**
 * A local port nothing reads (nothing leaves the machine). An agent that
 * announces only it (given
 * addresses replace the discovered ones) gets no answer to the sender's
 * direct attempts: only the server's relay reaches it.
 */
const val UNREACHABLE = "127.0.0.1:9"

/** Two agents in a shared room: alice sends, bob (announcing [bobAnnounce]) receives. */
class Agents(private val url: String, private val tmp: File, private val bobAnnounce: List<String>) {
    private val api = MeshApi(url)
    val aliceTransfers = Transfers()
    val bobTransfers = Transfers()
    lateinit var alice: MeshAgent
    lateinit var bob: MeshAgent
    lateinit var roomId: String

    private fun config(who: String, receive: File?, announce: List<String>) = AgentConfig(
        identityDir = File(tmp, "$who-identity").path,
        receiveDir = receive?.path,
        overwrite = false,
        bind = "127.0.0.1:0",
        announce = announce,
        deviceName = "kotlin",
    )

    suspend fun start(): Agents {
        alice = startAgent(url, api.register(name(), PASSWORD, null).token,
            config("alice", null, listOf()), Events(), aliceTransfers)
        bob = startAgent(url, api.register(name(), PASSWORD, null).token,
            config("bob", File(tmp, "inbox"), bobAnnounce), Events(), bobTransfers)
        roomId = alice.client().createRoom("files", null, false).id
        bob.client().joinRoom(roomId)
        return this
    }

    /** Sends [content] from alice to bob; both reports, checked byte-identical. */
    suspend fun send(fileName: String, content: ByteArray): Pair<TransferReport, TransferReport> {
        val src = File(tmp, fileName)
        src.writeBytes(content)
        val sent = alice.sendFile(roomId, bob.peerId()!!, src.path, aliceTransfers)
        check(sent.size == content.size.toULong()) { "$sent" }
        val received = bobTransfers.next() as? TransferReport
            ?: throw AssertionError("receive failed")
        check(received.sessionId == sent.sessionId && received.blake3 == sent.blake3) {
            "$received vs $sent"
        }
        check(File(received.path).readBytes().contentEquals(content)) { "content differs" }
        return Pair(sent, received)
    }

    suspend fun stop() {
        alice.shutdown()
        bob.shutdown()
    }
}

suspend fun withAgents(url: String, bobAnnounce: List<String>, test: suspend (Agents) -> Unit) {
    val tmp = Files.createTempDirectory("mesh-kt-p2p-").toFile()
    try {
        val agents = Agents(url, tmp, bobAnnounce).start()
        try {
            test(agents)
        } finally {
            agents.stop()
        }
    } finally {
        tmp.deleteRecursively()
    }
}

/** A 2 MiB file goes straight between the agents (loopback), with progress. */
suspend fun p2pDirect(url: String) = withAgents(url, listOf()) { p ->
    val content = ByteArray(2 * 1024 * 1024 + 7) { (it * 31 % 251).toByte() }
    val (sent, received) = p.send("notes.bin", content)
    check(sent.via == "direct" && received.via == "direct") { "via ${sent.via}/${received.via}" }
    val last = p.aliceTransfers.progress.last()
    check(last.done == last.total && last.total == content.size.toULong()) { "$last" }
    check(p.bobTransfers.progress.isNotEmpty()) { "no receive progress" }
}

/** The receiver announces only an address nobody answers at: the relay carries it. */
suspend fun p2pRelayed(url: String) = withAgents(url, listOf(UNREACHABLE)) { p ->
    val content = ByteArray(256 * 1024 + 3) { (it * 17 % 253).toByte() }
    val (sent, received) = p.send("relayed.bin", content)
    check(sent.via == "relay" && received.via == "relay") { "via ${sent.via}/${received.via}" }
}
