// The chat scenario through the generated Kotlin binding (JNA + coroutines),
// against a real mesh-server on a free port, then the P2P transfers of
// P2pTest.kt against the same server. Run by
// bindings/mesh-ffi/tests/kotlin/run.sh (scripts/test.sh calls it).

import java.nio.file.Files
import java.util.UUID
import java.util.concurrent.LinkedBlockingQueue
import java.util.concurrent.TimeUnit
import kotlin.concurrent.thread
import kotlinx.coroutines.runBlocking
import uniffi.mesh_ffi.MeshApi
import uniffi.mesh_ffi.MeshEvent
import uniffi.mesh_ffi.MeshException
import uniffi.mesh_ffi.MeshListener
import uniffi.mesh_ffi.TransferListener
import uniffi.mesh_ffi.TransferProgress
import uniffi.mesh_ffi.TransferReport
import uniffi.mesh_ffi.connect

const val PASSWORD = "correct horse battery"

fun check(ok: Boolean, what: () -> String) {
    if (!ok) throw AssertionError(what())
}

/** Hands events from the library's thread to the test. */
class Events : MeshListener {
    private val queue = LinkedBlockingQueue<MeshEvent>()

    override fun onEvent(event: MeshEvent) {
        queue.put(event)
    }

    fun <T> waitFor(pick: (MeshEvent) -> T?): T {
        val deadline = System.nanoTime() + TimeUnit.SECONDS.toNanos(10)
        while (true) {
            val left = deadline - System.nanoTime()
            val event = queue.poll(left.coerceAtLeast(0), TimeUnit.NANOSECONDS)
                ?: throw AssertionError("no such event")
            pick(event)?.let { return it }
        }
    }
}

/** Collects progress; hands finished transfers to the test. */
class Transfers : TransferListener {
    val progress = java.util.Collections.synchronizedList(mutableListOf<TransferProgress>())
    val done = LinkedBlockingQueue<Any>()

    override fun onProgress(progress: TransferProgress) {
        this.progress.add(progress)
    }

    override fun onReceived(report: TransferReport) {
        done.put(report)
    }

    override fun onFailed(sessionId: String, error: MeshException) {
        done.put(error)
    }

    fun next(): Any = done.poll(10, TimeUnit.SECONDS) ?: throw AssertionError("no transfer ended")
}

fun name() = "u" + UUID.randomUUID().toString().replace("-", "").take(10)

fun main(args: Array<String>) {
    val data = Files.createTempDirectory("mesh-kt-").toFile()
    val server = ProcessBuilder(args[0], "--listen", "127.0.0.1:0", "--data", data.path)
        .redirectOutput(ProcessBuilder.Redirect.DISCARD)
        .start()
    val addr = LinkedBlockingQueue<String>()
    thread(isDaemon = true) {
        try {
            server.errorStream.bufferedReader().forEachLine { line ->
                Regex("listening on (\\S+)").find(line)?.let { addr.put(it.groupValues[1]) }
            }
        } catch (e: java.io.IOException) {
            // The server was stopped: its log closed under us.
        }
    }
    val url = "http://" + (addr.poll(30, TimeUnit.SECONDS) ?: error("server did not start"))
    try {
        runBlocking { chat(url) }
        println("kotlin chat test: ok")
        runBlocking { p2pDirect(url) }
        println("kotlin P2P test, direct: ok")
        runBlocking { p2pRelayed(url) }
        println("kotlin P2P test, relayed: ok")
    } finally {
        server.destroy()
        server.waitFor(10, TimeUnit.SECONDS)
        data.deleteRecursively()
    }
}

suspend fun chat(url: String) {
    val api = MeshApi(url)
    val aliceAuth = api.register(name(), PASSWORD, null)
    val bobAuth = api.register(name(), PASSWORD, null)
    val aliceEvents = Events()
    val bobEvents = Events()
    val alice = connect(url, aliceAuth.token, "kotlin", aliceEvents)
    val bob = connect(url, bobAuth.token, "kotlin", bobEvents)
    check(alice.me()?.username == aliceAuth.user.username) { "me" }

    val room = alice.createRoom("general", "chat", false)
    val members = bob.joinRoom(room.id)
    check(members.size == 2) { "members: $members" }

    val sent = alice.sendMessage(room.id, "hello bob")
    check(sent.seq == 1UL) { "seq ${sent.seq}" }
    val got = bobEvents.waitFor { (it as? MeshEvent.Message)?.message }
    check(got.content == "hello bob" && got.sender.username == aliceAuth.user.username) { "$got" }

    bob.setTyping(room.id, true)
    val typing = aliceEvents.waitFor { it as? MeshEvent.Typing }
    check(typing.userId == bobAuth.user.id && typing.typing) { "$typing" }

    for (i in 2..7) bob.sendMessage(room.id, "message $i")
    val newest = alice.history(room.id, null, null, 3u)
    check(newest.messages.map { it.seq } == listOf(5UL, 6UL, 7UL) && newest.hasMore) { "$newest" }
    val older = alice.history(room.id, 5UL, null, 10u)
    check(older.messages.map { it.seq } == listOf(1UL, 2UL, 3UL, 4UL) && !older.hasMore) { "$older" }

    val grant = alice.requestP2pSession(room.id, bob.peerId()!!, "file")
    check(grant.targetPeerId == bob.peerId()) { "$grant" }
    val heard = bobEvents.waitFor { (it as? MeshEvent.P2pSessionCreated)?.session }
    check(heard.sessionId == grant.sessionId) { "$heard" }

    // Errors arrive as the flat MeshException with the contract's code.
    try {
        api.login(aliceAuth.user.username, "not the password")
        throw AssertionError("a wrong password logged in")
    } catch (e: MeshException.Server) {
        check(e.code == "unauthorized") { "code ${e.code}" }
    }
    val secret = alice.createRoom("secret", null, true)
    try {
        bob.sendMessage(secret.id, "let me in")
        throw AssertionError("an outsider posted to a private room")
    } catch (e: MeshException.Server) {
        check(e.code == "forbidden") { "code ${e.code}" }
    }

    alice.shutdown()
    bob.shutdown()
    val closed = aliceEvents.waitFor { it as? MeshEvent.Closed }
    check(closed.error == null) { "$closed" }
}
